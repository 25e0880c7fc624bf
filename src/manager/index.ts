/** The manager: starts, stops and watches hypervisor processes for domains. */
export * from './errors';
export * from './lifecycle';
export * from './console';
export { hypervisorBuildId } from './hypervisor-build';
export { machineConfigFromDomain } from './machine-config-from-domain';
