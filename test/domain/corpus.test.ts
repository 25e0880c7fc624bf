import fs from 'node:fs';
import path from 'node:path';
import { BatonError } from '../../src/util/errors';
import { defineFromFile, DomainStore } from '../../src/domain/store';
import { parseDomainXml } from '../../src/domain/xml';
import { snapshotDir, tempBatonDirs } from './helpers';

/**
 * The bad-XML corpus: every file in bad/ must be refused by `vm define`'s library function
 * with the code and message fragment listed in bad/EXPECTATIONS.json, and must leave the
 * store directory byte-for-byte as it was.
 */
const BAD_DIR = path.join(__dirname, 'bad');
const expectations = JSON.parse(fs.readFileSync(path.join(BAD_DIR, 'EXPECTATIONS.json'), 'utf8')) as Record<string, { code: string; message: string }>;

/** The template the corpus files vary; it must itself define cleanly. */
const CONTROL = `<domain type='kvm'>
  <name>control</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'>hvm</type>
    <kernel>vmlinuz</kernel>
  </os>
  <devices>
    <interface type='ethernet'>
      <target dev='bt-control0'/>
    </interface>
  </devices>
</domain>
`;

describe('bad domain XML corpus', () => {
  const dirs = tempBatonDirs('corpus');
  const inputDir = path.join(dirs.root, 'input');
  const store = new DomainStore(dirs);
  let before: Record<string, string>;

  beforeAll(async () => {
    fs.mkdirSync(inputDir);
    for (const name of Object.keys(expectations)) fs.copyFileSync(path.join(BAD_DIR, name), path.join(inputDir, name));
    // A stand-in kernel: define only checks that the file exists and is readable.
    fs.writeFileSync(path.join(inputDir, 'vmlinuz'), 'not really a kernel\n');
    const existing = CONTROL.replace('<name>control</name>', '<name>existing</name>\n  <uuid>a1b2c3d4-0000-4000-8000-000000000001</uuid>').replace('bt-control0', 'bt-used0');
    await store.define(parseDomainXml(existing, { baseDir: inputDir }));

    // The control proves the corpus fails for its own reason, not because of the template.
    fs.writeFileSync(path.join(inputDir, 'control.xml'), CONTROL);
    const { domain } = await defineFromFile(store, path.join(inputDir, 'control.xml'));
    expect(domain.name).toBe('control');
    await store.undefine('control');
    before = snapshotDir(dirs.stateDir);
    expect(Object.keys(before)).toContain('existing.xml');
  });
  afterAll(() => dirs.cleanup());

  it('has at least 30 cases, and an expectation for every file', () => {
    const files = fs.readdirSync(BAD_DIR).filter((f) => f.endsWith('.xml'));
    expect(files.length).toBeGreaterThanOrEqual(30);
    expect(files.sort()).toEqual(Object.keys(expectations).sort());
  });

  it.each(Object.entries(expectations))('%s is refused (%j) and the store is unchanged', async (file, expected) => {
    let caught: unknown;
    try {
      await defineFromFile(store, path.join(inputDir, file));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(BatonError);
    const err = caught as BatonError;
    expect({ code: err.code, message: err.message }).toEqual({ code: expected.code, message: expect.stringContaining(expected.message) });
    expect(snapshotDir(dirs.stateDir)).toEqual(before);
  });
});
