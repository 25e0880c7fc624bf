/**
 * baton-hv's process: build the machine, run it, open its monitor and console, and exit
 * when the guest powers off or `quit` arrives (as QEMU does). The guest starts first: the
 * monitor and the console socket (and the code behind them, loaded on demand) come up
 * while it boots, since the guest needs neither.
 */
import { BatonError } from '../util/errors';
import { loggerFor } from '../util/logger';
import { parseHvArgs } from './cli-args';
import { checkPinningAgainstHost, idleNodeHelperThreads, pinEmulatorThreads } from './host-threads';
import { MachineConfig } from './machine-config';
import { Nics } from './nics';
import type { MonitorHandle } from './qmp-commands';
import { SerialConsole } from './serial-console';
import { setThreadPriority } from './thread-priority';
import { Vm } from './vm';

const log = loggerFor('baton-hv');

export interface Hypervisor {
  vm: Vm;
  nics: Nics;
  config: MachineConfig;
  /** Ends the process's VM, closes sockets; resolves when done. */
  quit(code?: number): Promise<void>;
}

export async function runHypervisor(config: MachineConfig): Promise<Hypervisor> {
  idleNodeHelperThreads();
  checkPinningAgainstHost(config.cpuPinning);
  if (config.cpuPinning?.emulator) pinEmulatorThreads(config.cpuPinning.emulator);
  // Incoming: guest RAM comes with the migration (its fd, the shared file, or copied).
  const vm = Vm.create(config, { loadImage: !config.incoming, deferMemory: !!config.incoming });
  const nics = new Nics(vm);
  try {
    for (const n of config.netdevs) nics.addNetdev(n, undefined, { incoming: !!config.incoming });
    for (const d of config.devices) nics.addDevice(d);
  } catch (err) {
    nics.closeAll();
    vm.destroy();
    throw err;
  }
  const console = new SerialConsole((d) => vm.serial.input(d));
  console.openLog(config.serial.logFile);
  vm.on('serialOutput', (bytes) => console.write(bytes));
  // Set once the monitor is up (after the guest started); events before that reach no one.
  const management: { monitor?: MonitorHandle } = {};
  let quitting = false;
  const hv: Hypervisor = {
    vm,
    nics,
    config,
    quit: async (code = 0) => {
      if (quitting) return;
      quitting = true;
      await management.monitor?.close();
      console.close();
      nics.closeAll();
      vm.destroy();
      process.exitCode = code;
    },
  };
  vm.on('event', (name, data) => {
    management.monitor?.emitEvent(name, data);
    if (name === 'SHUTDOWN' && config.onPoweroff === 'destroy') {
      // QEMU exits after a guest power-off; give the event a moment to reach clients.
      setTimeout(() => void hv.quit(0), 20);
    }
  });
  vm.startThreads();
  if (config.incoming) {
    vm.setStatus('inmigrate');
    // Until the switchover, a running guest elsewhere on this host (the source) comes first.
    setThreadPriority('background');
  } else if (!config.startPaused) {
    vm.resume();
  }

  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { startMonitor } = require('./qmp-commands') as typeof import('./qmp-commands');
  const monitor = await startMonitor(hv);
  management.monitor = monitor;
  await console.openSocket(config.serial.socket);
  // QEMU's -incoming URI starts loading at once; 'defer' waits for migrate-incoming.
  if (config.incoming && config.incoming !== 'defer') {
    monitor.migration.migrateIn(config.incoming, !config.startPaused).catch((err: Error) => {
      process.stderr.write(`baton-hv: load of migration failed: ${err.message}\n`);
      void hv.quit(1);
    });
  }
  return hv;
}

export function main(argv: string[]): void {
  let config: MachineConfig;
  try {
    config = parseHvArgs(argv);
  } catch (err) {
    const e = err as BatonError;
    process.stderr.write(e.code === 'EHELP' ? e.message : `baton-hv: ${e.message}\n`);
    process.exit(e.code === 'EHELP' ? 0 : 2);
  }
  runHypervisor(config).then((hv) => {
    const stop = () => void hv.quit(0);
    process.on('SIGTERM', stop);
    process.on('SIGINT', stop);
  }, (err: Error) => {
    log.error(err.message);
    process.stderr.write(`baton-hv: ${err.message}\n`);
    process.exit(1);
  });
}
