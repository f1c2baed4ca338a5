import { randomInt } from 'node:crypto';

// Short, friendly, unambiguous words for quick-tunnel hostnames (as trycloudflare does).
const ADJECTIVES = [
  'amber',
  'brisk',
  'calm',
  'deep',
  'eager',
  'fuzzy',
  'gentle',
  'hidden',
  'icy',
  'jolly',
  'keen',
  'lucky',
  'mellow',
  'nimble',
  'odd',
  'proud',
  'quiet',
  'rapid',
  'shy',
  'tidy',
  'upbeat',
  'vivid',
  'witty',
  'young',
  'zesty',
];
const NOUNS = [
  'badger',
  'burrow',
  'canyon',
  'delta',
  'ember',
  'fern',
  'garden',
  'harbor',
  'island',
  'juniper',
  'kestrel',
  'lantern',
  'meadow',
  'nettle',
  'otter',
  'pebble',
  'quarry',
  'rabbit',
  'summit',
  'thicket',
  'valley',
  'warren',
  'willow',
  'yarrow',
  'zephyr',
];

/** A random DNS label like `brisk-otter-meadow-3f9a`: about 2^30 possibilities. */
export function quickTunnelName(): string {
  const pick = (list: readonly string[]) => list[randomInt(list.length)]!;
  const suffix = randomInt(0x10000).toString(16).padStart(4, '0');
  return `${pick(ADJECTIVES)}-${pick(NOUNS)}-${pick(NOUNS)}-${suffix}`;
}
