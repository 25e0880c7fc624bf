import { formatCpuset, parseCpuset } from '../../src/util/cpuset';

describe("libvirt's cpuset syntax", () => {
  it.each([
    ['0', [0]],
    ['1,0,1', [0, 1]],
    ['0-3', [0, 1, 2, 3]],
    ['0-3,^2,6', [0, 1, 3, 6]],
    [' 2 , 4-5 ', [2, 4, 5]],
    ['1023', [1023]],
  ])('parses %j', (text, cpus) => {
    expect(parseCpuset(text)).toEqual(cpus);
  });

  it.each([
    ['', /an entry is empty/],
    ['1,', /an entry is empty/],
    ['a', /'a' is not a CPU number/],
    ['1-', /'1-' is not a CPU number/],
    ['3-1', /range '3-1' runs backwards/],
    ['^0', /names no CPU/],
    ['0-1,^0,^1', /names no CPU/],
    ['1024', /CPU 1024 is above 1023/],
    ['-1', /is not a CPU number/],
  ])('refuses %j with the reason', (text, reason) => {
    expect(() => parseCpuset(text)).toThrow(reason);
  });

  it('formats CPU lists as ranges, whatever the order', () => {
    expect(formatCpuset([4, 0, 2, 1, 1])).toBe('0-2,4');
    expect(formatCpuset([7])).toBe('7');
    expect(parseCpuset(formatCpuset([0, 1, 3, 6, 7, 8]))).toEqual([0, 1, 3, 6, 7, 8]);
  });
});
