/**
 * libvirt's cpuset syntax (virBitmapParse): comma-separated host CPU numbers and ranges, with
 * `^N` taking a CPU back out, e.g. `0-3,^2,6`. Shared by the domain XML (`<cputune>`) and
 * baton-hv's pinning flags.
 */

/** Highest CPU number accepted: the size of the kernel's default cpu_set_t. */
export const MAX_CPU = 1023;

/** The CPUs of `text`, sorted and unique; throws an Error saying what is wrong (callers name the text). */
export function parseCpuset(text: string): number[] {
  const chosen = new Set<number>();
  const excluded = new Set<number>();
  const cpu = (s: string): number => {
    if (!/^\d+$/.test(s)) throw new Error(`'${s}' is not a CPU number`);
    const n = Number(s);
    if (n > MAX_CPU) throw new Error(`CPU ${n} is above ${MAX_CPU}`);
    return n;
  };
  const parts = text.split(',').map((p) => p.trim());
  for (const part of parts) {
    if (part === '') throw new Error('an entry is empty');
    if (part.startsWith('^')) {
      excluded.add(cpu(part.slice(1)));
      continue;
    }
    const range = /^(\d+)-(\d+)$/.exec(part);
    if (range) {
      const [from, to] = [cpu(range[1]), cpu(range[2])];
      if (from > to) throw new Error(`range '${part}' runs backwards`);
      for (let n = from; n <= to; n++) chosen.add(n);
    } else {
      chosen.add(cpu(part));
    }
  }
  for (const n of excluded) chosen.delete(n);
  if (chosen.size === 0) throw new Error('it names no CPU');
  return [...chosen].sort((a, b) => a - b);
}

/** The canonical text of a CPU list (ranges where consecutive): [0,1,2,4] → "0-2,4". */
export function formatCpuset(cpus: readonly number[]): string {
  const sorted = [...new Set(cpus)].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j] + 1) j++;
    parts.push(j > i ? `${sorted[i]}-${sorted[j]}` : String(sorted[i]));
    i = j + 1;
  }
  return parts.join(',');
}
