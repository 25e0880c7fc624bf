export { BatonError } from './util/errors';
