/**
 * Seeds shared by the standalone job and the distributed services: both call these, so the same job spec gives the
 * same numbers wherever it runs.
 */
import { createHash } from 'node:crypto';

/**
 * Local-training seed (LoRA dropout masks) of client `clientId` in `round`: the first 31 bits of
 * sha256(jobSeed/round/clientId). A hash of the id, not its length (`seed + 131 round + id.length` gave the demo's
 * clients add, sub and mul the same masks every round) and not its index (a trainer that loads only its own client
 * still knows its id). 31 bits keep it a non-negative safe integer for every RNG in the project.
 */
export function clientTrainingSeed(jobSeed: number, round: number, clientId: string): number {
  const h = createHash('sha256').update(`${jobSeed}/${round}/${clientId}`).digest();
  return h.readUInt32BE(0) >>> 1;
}
