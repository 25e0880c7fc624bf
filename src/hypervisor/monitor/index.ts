/** baton-hv's QMP monitor: server, client, command registry and transports. */
export { QmpServer, QMP_DIALECT_QEMU_VERSION, DEFAULT_MONITOR_LIMITS, batonVersion } from './qmp-server';
export type { QmpServerOptions, QmpVersionInfo, QmpCommandErrorInfo } from './qmp-server';
export { QmpClient } from './qmp-client';
export type { QmpClientOptions, QmpEvent, QmpGreeting } from './qmp-client';
export { QmpCommandRegistry, checkArguments } from './commands';
export type { QmpCommandContext, QmpCommandDefinition, QmpHandler, QmpMembers, QmpType } from './commands';
export { QmpError, QmpErrors, genericError } from './qmp-errors';
export type { QmpErrorClass } from './qmp-errors';
export { QmpFdTable, QmpMessageFds } from './fd-table';
export { NetMonitorTransport, removeStaleSocket, MONITOR_SOCKET_MODE } from './transport';
export type { MonitorConnection, MonitorConnectionHandlers, MonitorTransport } from './transport';
export { JsonStreamReader, QEMU_JSON_LIMITS } from './json-stream';
export type { JsonStreamItem, JsonStreamLimits } from './json-stream';
export { formatQmpJson, encodeQmpMessage } from './json-format';
export type { QmpValue } from './json-format';
