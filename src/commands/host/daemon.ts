import { Flags } from '@oclif/core';
import { DEFAULT_BUS_NAME, MANAGER_OBJECT_PATH, startDaemon } from '../../daemon/dbus-service';
import { BatonCommand } from '../base';

export default class Daemon extends BatonCommand<typeof Daemon> {
  static override summary = 'Serve the domain list and lifecycle methods on D-Bus, and signal every lifecycle change.';

  static override description = `Owns ${DEFAULT_BUS_NAME} and exports ${MANAGER_OBJECT_PATH} (interface ${DEFAULT_BUS_NAME}):
ListDomains() -> a(ssss), Start(s), Shutdown(s), Destroy(s), Suspend(s), Resume(s),
Migrate(s name, s policy) -> (u pause_ms, u new_pid); failures are D-Bus errors named
dev.baton.Error.<CODE>. The signal DomainEvent(s name, s uuid, s event, s detail) reports
every lifecycle change, including those made by the CLI: defined, undefined, started,
suspended, resumed, stopped (shutdown/destroyed/crashed/failed), migrated, upgraded.
Runs in the foreground (systemd Type=dbus, see systemd/baton-daemon.service); SIGTERM or
SIGINT releases the name and exits 0.`;

  static override examples = [
    '<%= config.bin %> <%= command.id %>',
    '<%= config.bin %> <%= command.id %> --bus session',
    '<%= config.bin %> <%= command.id %> --address unix:path=/tmp/test-bus',
  ];

  static override flags = {
    bus: Flags.string({ description: 'which bus to connect to', options: ['system', 'session'], default: 'system' }),
    address: Flags.string({ description: 'connect to this bus address (e.g. unix:path=/run/my-bus) instead of the standard one' }),
    name: Flags.string({ description: 'the well-known name to own', default: DEFAULT_BUS_NAME }),
  };

  public async run(): Promise<void> {
    const daemon = await startDaemon({ bus: this.flags.bus as 'system' | 'session', address: this.flags.address, busName: this.flags.name });
    // stderr, so a supervisor (or a test) can tell the name is taken; stdout stays free.
    process.stderr.write(`baton daemon: owning ${daemon.busName}\n`);
    await new Promise<void>((resolve) => {
      const onSignal = (): void => {
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
        resolve();
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
    });
    await daemon.stop();
  }
}
