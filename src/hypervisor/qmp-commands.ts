/**
 * The VM's QMP commands, QEMU's names and argument shapes: run control, power, reset,
 * status, and the migration commands behind save/restore. The monitor server owns the
 * protocol; this file only maps commands onto the Vm and the MigrationManager.
 */
import { BatonError } from '../util/errors';
import type { Hypervisor } from './main';
import { MigrationManager } from './migration/migration-manager';
import { QmpCommandContext, QmpMembers, QmpServer, genericError } from './monitor';
import { NativeMonitorTransport } from './monitor/native-transport';

export interface MonitorHandle {
  server: QmpServer;
  migration: MigrationManager;
  emitEvent(name: string, data?: Record<string, unknown>): void;
  close(): Promise<void>;
}

/** QEMU's text when a VM must be reset before it can run again. */
const NEEDS_RESET = 'Resetting the Virtual Machine is required';

function asQmp<T>(fn: () => Promise<T> | T): Promise<T> {
  return Promise.resolve().then(fn).catch((err: Error) => {
    throw err instanceof BatonError && err.code === 'QMP_ERROR' ? err : genericError(err.message);
  });
}

export async function startMonitor(hv: Hypervisor): Promise<MonitorHandle> {
  const { vm, config } = hv;
  const server = new QmpServer({ transport: new NativeMonitorTransport() });
  const migration = new MigrationManager(vm, (n, d) => server.emitEvent(n, d), {
    onLocalHandoverComplete: () => hv.nics.releaseHandedOver(),
    netpass: hv.nics.netpass,
    holdEvents: () => server.holdEvents(),
  });
  const reg = (name: string, def: Parameters<QmpServer['registerCommand']>[1]) => server.registerCommand(name, def);

  reg('query-status', {
    handler: () => ({ status: vm.status, singlestep: false, running: vm.status === 'running' }),
  });
  // libvirt finds the vCPU threads to pin (and tools the ones to watch) by thread-id.
  reg('query-cpus-fast', {
    handler: () => vm.vcpus.map((v) => ({
      'cpu-index': v.id, 'qom-path': `/machine/unattached/device[${v.id}]`, 'thread-id': v.tid,
      props: { 'socket-id': v.id, 'core-id': 0, 'thread-id': 0 }, target: 'x86_64',
    })),
  });
  reg('stop', {
    handler: () => asQmp(async () => {
      if (vm.status === 'running') await vm.pause('paused');
      else if (vm.status === 'prelaunch') config.startPaused = true;
      return {};
    }),
  });
  reg('cont', {
    handler: () => asQmp(() => {
      if (vm.status === 'internal-error' || vm.status === 'shutdown') throw genericError(NEEDS_RESET);
      if (vm.status === 'inmigrate') {
        migration.autostart = true;
        return {};
      }
      vm.resume();
      return {};
    }),
  });
  reg('system_powerdown', { handler: () => { vm.requestPowerdown(); return {}; } });
  reg('system_reset', {
    handler: () => asQmp(async () => {
      await vm.reset('host-qmp-system-reset');
      return {};
    }),
  });
  reg('quit', {
    handler: (_args, ctx) => {
      ctx.afterResponse(() => {
        server.emitEvent('SHUTDOWN', { guest: false, reason: 'host-qmp-quit' });
        setTimeout(() => void hv.quit(0), 10);
      });
      return {};
    },
  });
  // Baton extension (QEMU prints this on stderr): why the VM is in internal-error.
  reg('x-query-internal-error', { handler: () => vm.lastError ?? {} });
  // Baton extension: instructions completed for the host's emulator, per instruction.
  reg('x-query-instruction-completions', { handler: () => vm.completer?.countsObject() ?? {} });

  reg('migrate-set-capabilities', {
    args: { capabilities: { array: { struct: { capability: 'str', state: 'bool' } } } },
    handler: (args) => {
      const caps = args.capabilities as { capability: string; state: boolean }[];
      for (const c of caps) {
        if (!migration.capabilities.has(c.capability)) throw genericError(`Parameter 'capability' does not accept value '${c.capability}'`);
      }
      for (const c of caps) migration.capabilities.set(c.capability, c.state);
      return {};
    },
  });
  reg('query-migrate-capabilities', {
    handler: () => [...migration.capabilities].map(([capability, state]) => ({ capability, state })),
  });
  reg('migrate', {
    args: { uri: 'str', '*blk': 'bool', '*inc': 'bool', '*detach': 'bool', '*resume': 'bool' },
    handler: (args) => asQmp(async () => {
      // Refusals that need no I/O come back as this command's error; then, as QEMU does,
      // the command returns and progress shows in query-migrate and MIGRATION events.
      migration.checkOutgoing(args.uri as string);
      migration.migrateOut(args.uri as string).catch(() => undefined);
      return {};
    }),
  });
  reg('migrate_cancel', { handler: () => { migration.cancel(); return {}; } });
  reg('migrate-set-parameters', {
    args: { '*local': 'bool', '*downtime-limit': 'uint64', '*netpass': 'bool' },
    handler: (args) => asQmp(() => {
      if (['setup', 'active', 'device'].includes(migration.status)) throw genericError("There's a migration process in progress");
      if (args.local !== undefined) migration.parameters.local = args.local as boolean;
      if (args['downtime-limit'] !== undefined) migration.parameters['downtime-limit'] = Number(args['downtime-limit']);
      if (args.netpass !== undefined) migration.parameters.netpass = args.netpass as boolean;
      return {};
    }),
  });
  reg('query-migrate-parameters', { handler: () => ({ ...migration.parameters }) });
  reg('migrate-incoming', {
    args: { uri: 'str' },
    handler: (args) => asQmp(async () => {
      if (config.incoming !== 'defer') throw genericError("'-incoming' was not specified on the command line");
      // Answer once the destination listens, so the caller may start the source's migrate. A
      // URI that cannot be listened on is the command's error; a failed load ends the process.
      await new Promise<void>((resolve, reject) => {
        let listening = false;
        migration.migrateIn(args.uri as string, !config.startPaused, () => { listening = true; resolve(); }).catch((err: Error) => {
          reject(err);
          if (!listening) return;
          process.stderr.write(`baton-hv: load of migration failed: ${err.message}\n`);
          setTimeout(() => void hv.quit(1), 50);
        });
      });
      return {};
    }),
  });
  reg('query-migrate', { handler: () => migration.query() });

  registerNicCommands(hv, reg);

  await server.listen(config.monitor.socket);
  return {
    server,
    migration,
    emitEvent: (n, d) => server.emitEvent(n, d),
    close: () => {
      migration.close();
      return server.close();
    },
  };
}

/** `-netdev tap` options as QMP netdev_add members (QEMU's NetdevTapOptions, plus incoming-fds). */
const TAP_MEMBERS: QmpMembers = {
  type: { enum: ['tap'] }, id: 'str', '*ifname': 'str', '*fd': 'str', '*fds': 'str', '*script': 'str', '*downscript': 'str',
  '*br': 'str', '*helper': 'str', '*sndbuf': 'size', '*vnet_hdr': 'bool', '*vhost': 'bool', '*vhostfd': 'str',
  '*vhostfds': 'str', '*vhostforce': 'bool', '*queues': 'uint32', '*poll-us': 'uint32', '*incoming-fds': 'bool',
};
const DEVICE_MEMBERS: QmpMembers = {
  driver: 'str', '*id': 'str', '*netdev': 'str', '*mac': 'str', '*mq': 'bool', '*local-migration': 'bool',
  '*bus': 'str', '*addr': 'str', '*romfile': 'str', '*disable-legacy': 'str', '*vectors': 'uint32',
};

function registerNicCommands(hv: Hypervisor, reg: (name: string, def: Parameters<QmpServer['registerCommand']>[1]) => void): void {
  const { nics, config } = hv;
  // fd=NAME and fds=A:B name fds passed earlier with getfd on this monitor connection.
  const resolver = (ctx: QmpCommandContext) => (nameOrNumber: string): number => {
    if (/^\d+$/.test(nameOrNumber)) return Number(nameOrNumber);
    const fd = ctx.fds.take(nameOrNumber);
    if (fd === undefined) throw genericError(`File descriptor named '${nameOrNumber}' has not been found`);
    return fd;
  };
  reg('netdev_add', {
    args: TAP_MEMBERS,
    handler: (args, ctx) => asQmp(() => {
      nics.addNetdev(args as Record<string, string | number | boolean>, resolver(ctx), { incoming: !!config.incoming });
      return {};
    }),
  });
  reg('netdev_del', { args: { id: 'str' }, handler: (args) => asQmp(() => { nics.delNetdev(args.id as string); return {}; }) });
  reg('device_add', { args: DEVICE_MEMBERS, handler: (args) => asQmp(() => { nics.addDevice(args); return {}; }) });
  reg('device_del', { args: { id: 'str' }, handler: (args) => asQmp(() => { nics.delDevice(args.id as string); return {}; }) });
  reg('set_link', {
    args: { name: 'str', up: 'bool' },
    handler: (args) => asQmp(() => { nics.setLink(args.name as string, args.up as boolean); return {}; }),
  });
  // QEMU's generic property setter, for the one runtime-settable NIC property.
  reg('qom-set', {
    args: { path: 'str', property: 'str', value: 'any' },
    handler: (args) => asQmp(() => {
      const m = /^\/machine\/peripheral\/([^/]+)$/.exec(args.path as string);
      if (!m) throw genericError(`Device '${args.path}' not found`);
      if (args.property !== 'local-migration') throw genericError(`Property '${args.property}' not found`);
      if (typeof args.value !== 'boolean') throw genericError(`Parameter 'local-migration' expects a boolean`);
      nics.setLocalMigration(m[1], args.value);
      return {};
    }),
  });
  // Baton extension: NICs with their backends (QEMU shows this only in HMP `info network`).
  reg('x-query-nics', { handler: () => nics.info() });
}
