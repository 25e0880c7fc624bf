/**
 * Guest RAM on a local migration travels as its memory fd: a 512 MiB guest migrates with
 * query-migrate `ram.transferred` = 0. Without `local`, a migration over the same kind of
 * UNIX socket copies RAM instead (transferred > 0) — the guest's code and data come
 * through the copy, so a guest that keeps answering on the far side proves the copy — and
 * the NIC then needs a TAP of its own on the destination (the new-tap way: the host
 * address moves to it once the source is gone).
 */
import { netSkipReason } from '../net/net-helpers';
import { migrationLabForSuite } from './migration-helpers';

const skipReason = netSkipReason();
const lab = migrationLabForSuite('ramfd', skipReason);
const MIB = 1024 * 1024;
const GUEST_MIB = 512;


test('a 512 MiB guest migrates locally with zero RAM bytes transferred', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const source = await lab.startSource({ tag: 'fd-src', memMiB: GUEST_MIB });
  const destination = await lab.startDestination('fd-dst', { memMiB: GUEST_MIB });
  const outcome = await lab.migrate(source, destination, { local: true });
  expect(`${outcome.status} ${outcome.info['error-desc'] ?? ''}`.trim()).toBe('completed');
  expect(outcome.info.ram).toMatchObject({ transferred: 0, total: GUEST_MIB * MIB, remaining: 0 });
  await lab.retire(source);
  expect(lab.net.ping(50, 0.005)).toMatchObject({ transmitted: 50, received: 50 });
  console.log(`512 MiB by fd: downtime ${outcome.info.downtime} ms, total ${outcome.info['total-time']} ms, 0 bytes of RAM copied`);
  await lab.retire(destination);
}, 120_000);

test('without local, RAM is copied over the UNIX socket and the guest carries on (on a new TAP)', async () => {
  if (skipReason) {
    console.warn(`skipped: ${skipReason}`);
    return;
  }
  const outcome = await lab.copyToNewTap('copy', GUEST_MIB);
  console.log(`512 MiB copied: ${outcome.info.ram?.transferred} bytes, downtime ${outcome.info.downtime} ms, total ${outcome.info['total-time']} ms`);
}, 120_000);
