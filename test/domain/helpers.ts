import { ChildProcess, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BatonPaths } from '../../src/domain/paths';

/** A fresh state/run/log directory triple under the OS temp dir; `cleanup()` removes it. */
export function tempBatonDirs(label: string): BatonPaths & { root: string; cleanup: () => void } {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), `bt-${label}-`));
  const dirs = { stateDir: path.join(root, 'state'), runDir: path.join(root, 'run'), logDir: path.join(root, 'log') };
  return { ...dirs, root, cleanup: () => fs.rmSync(root, { recursive: true, force: true }) };
}

/** Every file of a directory (recursively) with its bytes, for "unchanged" comparisons. */
export function snapshotDir(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!fs.existsSync(dir)) return out;
  for (const name of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const file = path.join(dir, name);
    if (fs.statSync(file).isFile()) out[name] = fs.readFileSync(file).toString('base64');
  }
  return out;
}

/**
 * Runs libvirt's schema check on an XML string. Returns undefined (after saying why) when
 * virt-xml-validate is not installed (Debian: libvirt-clients + libxml2-utils).
 */
export function virtXmlValidate(xml: string, label: string): { ok: boolean; output: string } | undefined {
  const which = spawnSync('sh', ['-c', 'command -v virt-xml-validate']);
  if (which.status !== 0) {
    console.warn(`skipping libvirt schema check of ${label}: virt-xml-validate is not installed (apt-get install libvirt-clients libxml2-utils)`);
    return undefined;
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bt-validate-'));
  try {
    const file = path.join(dir, `${label.replace(/[^A-Za-z0-9.-]/g, '_')}.xml`);
    fs.writeFileSync(file, xml);
    const run = spawnSync('virt-xml-validate', [file, 'domain'], { encoding: 'utf8' });
    return { ok: run.status === 0, output: `${run.stdout}${run.stderr}` };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Resolves once a child process has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => (child.exitCode !== null || child.signalCode !== null ? resolve() : child.once('exit', () => resolve())));
}
