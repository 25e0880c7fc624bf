import { BatonError } from '../../src/util/errors';

describe('BatonError', () => {
  it('carries a stable code and serialises for --json', () => {
    const e = new BatonError('ENODOMAIN', 'domain "x" is not defined', { name: 'x' });
    expect(e).toBeInstanceOf(Error);
    expect(JSON.parse(JSON.stringify(e))).toEqual({ code: 'ENODOMAIN', message: 'domain "x" is not defined', name: 'x' });
  });
});
