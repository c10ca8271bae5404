import type { ThrottleSettings } from '../config/load-config.js';

/** What the database says right now (see signals.ts). */
export interface Signals {
  paused: boolean;
  pauseReason: string | null;
  pauseFile: boolean;
  /** Largest replay_lag of a physical standby, ms. */
  replicaLagMs: number;
  /** Largest WAL distance to a physical standby's replay position, bytes. */
  replicaLagBytes: number;
  /** Active client backends, pg-rekey's own excluded. */
  activeBackends: number;
}

export type ThrottleReason = 'paused' | 'pause-file' | 'replica-lag' | 'load' | 'critical-load';

export interface Decision {
  reason: ThrottleReason | null;
  detail: string;
}

/**
 * Any one signal pauses the sweep (gh-ost style); the first that applies is
 * reported. Critical load comes first because it stops or hibernates.
 * A threshold of 0 turns its signal off. Pure.
 */
export function decide(s: Signals, t: ThrottleSettings): Decision {
  if (t.criticalActiveBackends > 0 && s.activeBackends > t.criticalActiveBackends) {
    return { reason: 'critical-load', detail: `${s.activeBackends} active backends > critical_active_backends ${t.criticalActiveBackends}` };
  }
  if (s.paused) return { reason: 'paused', detail: `pg-rekey pause${s.pauseReason ? `: ${s.pauseReason}` : ''}` };
  if (s.pauseFile) return { reason: 'pause-file', detail: `pause file ${t.pauseFile} exists` };
  if (t.maxReplicaLagMs > 0 && s.replicaLagMs > t.maxReplicaLagMs) {
    return { reason: 'replica-lag', detail: `standby replay lag ${Math.round(s.replicaLagMs)} ms > max_replica_lag ${t.maxReplicaLagMs} ms` };
  }
  if (t.maxReplicaLagBytes > 0 && s.replicaLagBytes > t.maxReplicaLagBytes) {
    return { reason: 'replica-lag', detail: `standby ${s.replicaLagBytes} bytes behind > max_replica_lag_bytes ${t.maxReplicaLagBytes}` };
  }
  if (t.maxActiveBackends > 0 && s.activeBackends > t.maxActiveBackends) {
    return { reason: 'load', detail: `${s.activeBackends} active backends > max_active_backends ${t.maxActiveBackends}` };
  }
  return { reason: null, detail: '' };
}
