import type { Hypervisor } from './main';

export interface MonitorHandle {
  emitEvent(name: string, data?: Record<string, unknown>): void;
  close(): Promise<void>;
}

export async function startMonitor(_hv: Hypervisor): Promise<MonitorHandle> {
  return { emitEvent: () => undefined, close: async () => undefined };
}
