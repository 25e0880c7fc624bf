import { Command, Flags, Interfaces } from '@oclif/core';
import { DomainStore } from '../domain/store';
import { BatonError } from '../util/errors';
import { setLogLevel } from '../util/logger';

/**
 * Shared behaviour of every `baton` command: `--json` and `--verbose`, parsed flags/args on
 * `this.flags`/`this.args`, and one error format: `error: <message>` on stderr and exit
 * status 1, or with `--json` an object `{"error": {"code", "message", ...}}` on stdout.
 * Commands return their result object; oclif prints it as JSON under `--json`, and the
 * command prints the human form itself otherwise.
 */
export type CommandFlags<T extends typeof Command> = Interfaces.InferredFlags<(typeof BatonCommand)['baseFlags'] & T['flags']>;
export type CommandArgs<T extends typeof Command> = Interfaces.InferredArgs<T['args']>;

/** Code for errors from oclif's own argument parsing (missing argument, unknown flag...). */
const USAGE_ERROR_CODE = 'EUSAGE';
/** Code for errors Baton did not raise on purpose (bugs): the message is all we know. */
const INTERNAL_ERROR_CODE = 'EINTERNAL';

export abstract class BatonCommand<T extends typeof Command> extends Command {
  static override enableJsonFlag = true;

  static override baseFlags = {
    verbose: Flags.boolean({
      char: 'v',
      description: 'log what Baton does to stderr (debug level; BATON_LOG_LEVEL sets it too)',
      helpGroup: 'GLOBAL',
    }),
  };

  protected flags!: CommandFlags<T>;
  protected args!: CommandArgs<T>;

  public override async init(): Promise<void> {
    await super.init();
    const { args, flags } = await this.parse({
      flags: this.ctor.flags,
      baseFlags: (this.ctor as typeof BatonCommand).baseFlags,
      enableJsonFlag: this.ctor.enableJsonFlag,
      args: this.ctor.args,
      strict: this.ctor.strict,
    });
    this.flags = flags as CommandFlags<T>;
    this.args = args as CommandArgs<T>;
    if (this.flags.verbose) setLogLevel('debug');
  }

  /** The domain store at BATON_STATE_DIR / BATON_RUN_DIR / BATON_LOG_DIR (or the defaults). */
  protected store(): DomainStore {
    return new DomainStore();
  }

  protected override async catch(err: Error & { exitCode?: number; oclif?: unknown }): Promise<void> {
    process.exitCode = 1;
    const code = err instanceof BatonError ? err.code : err.oclif !== undefined ? USAGE_ERROR_CODE : INTERNAL_ERROR_CODE;
    if (this.jsonEnabled()) {
      const details = err instanceof BatonError ? err.details : {};
      this.logJson({ error: { ...details, code, message: err.message } });
      return;
    }
    this.logToStderr(`error: ${err.message}`);
    if (code === INTERNAL_ERROR_CODE && this.argv.some((a) => a === '--verbose' || a === '-v') && err.stack) this.logToStderr(err.stack);
  }
}

/**
 * oclif takes every module under commands/ for a command (its default export first), so this
 * file is also `baton base`. This hidden default export is that command, so oclif neither
 * lists it nor warns that it found none. (Excluding base.js with a commandDiscovery glob in
 * package.json would make it unnecessary.)
 */
export default class NotACommand extends BatonCommand<typeof NotACommand> {
  static override hidden = true;
  static override summary = 'Internal: the shared base of baton commands.';

  public async run(): Promise<void> {
    throw new BatonError('EUSAGE', "'base' is not a command; see 'baton --help'");
  }
}
