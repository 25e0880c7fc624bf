/**
 * Live upgrade of the hypervisor: every running domain whose baton-hv build differs from
 * the one installed now moves, with `local-fd` and RAM by fd, onto a fresh process of the
 * installed build (`vm migrate --local` for each). One failure does not stop the others;
 * a domain that fails stays on its old process, untouched.
 */
import { DomainStore } from '../domain/store';
import { domainState, readRuntimeRecord } from '../domain/runtime';
import { hypervisorBuildId } from './hypervisor-build';
import { migrateDomain } from './migrate';

export interface UpgradeEntry {
  name: string;
  fromBuild: string;
  toBuild: string;
  outcome: 'upgraded' | 'failed' | 'would-upgrade';
  pauseMs?: number;
  oldPid?: number;
  newPid?: number;
  error?: string;
}

export interface UpgradeResult {
  installedBuild: string;
  upToDate: string[];
  domains: UpgradeEntry[];
}

export async function upgradeHost(store: DomainStore, options: { dryRun?: boolean; onProgress?: (line: string) => void } = {}): Promise<UpgradeResult> {
  const installedBuild = hypervisorBuildId();
  const result: UpgradeResult = { installedBuild, upToDate: [], domains: [] };
  for (const domain of store.list()) {
    if (domainState(store.paths, domain.name).state === 'shut off') continue;
    const record = readRuntimeRecord(store.paths, domain.name);
    if (!record || record.state === 'shut off') continue;
    if (record.hypervisorBuild === installedBuild) {
      result.upToDate.push(domain.name);
      continue;
    }
    const entry: UpgradeEntry = { name: domain.name, fromBuild: record.hypervisorBuild, toBuild: installedBuild, outcome: 'would-upgrade' };
    result.domains.push(entry);
    if (options.dryRun) continue;
    options.onProgress?.(`${domain.name}: ${record.hypervisorBuild} -> ${installedBuild}`);
    try {
      const m = await migrateDomain(store, domain.name, { policy: 'local-fd' });
      Object.assign(entry, { outcome: 'upgraded', pauseMs: m.pause_ms, oldPid: m.old_pid, newPid: m.new_pid });
    } catch (err) {
      Object.assign(entry, { outcome: 'failed', error: (err as Error).message });
    }
  }
  return result;
}
