/**
 * Hop-by-hop header handling, RFC 9110 §7.6.1, over node's flat `rawHeaders` form
 * (`[name, value, name, value, …]`, case, order and duplicates as received).
 *
 * This runs on every proxied request and response, so it compares names without regexes and
 * without lower-casing every header: a length switch rejects almost all names before any
 * character is looked at.
 */

/**
 * Removes the hop-by-hop headers (Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
 * Transfer-Encoding, Upgrade) and every header named in a Connection header's value. Everything
 * else keeps its order, case and value. A trailing name without a value is dropped.
 */
export function stripHopByHop(rawHeaders: readonly string[]): string[] {
  const listed = connectionListed(rawHeaders);
  const out: string[] = [];
  const end = rawHeaders.length - (rawHeaders.length % 2);
  for (let i = 0; i < end; i += 2) {
    const name = rawHeaders[i]!;
    if (isHopByHop(name)) continue;
    if (listed !== undefined && isListed(name, listed)) continue;
    out.push(name, rawHeaders[i + 1]!);
  }
  return out;
}

/** The value of the first header called `name` (case-insensitive), or `undefined`. */
export function headerValue(rawHeaders: readonly string[], name: string): string | undefined {
  const lower = name.toLowerCase();
  const end = rawHeaders.length - (rawHeaders.length % 2);
  for (let i = 0; i < end; i += 2) {
    if (equalsLower(rawHeaders[i]!, lower)) return rawHeaders[i + 1];
  }
  return undefined;
}

/** True for a name in the fixed hop-by-hop set, in any case. */
export function isHopByHop(name: string): boolean {
  return isHopByHopAt(name, 0, name.length);
}

/** `isHopByHop(s.slice(start, end))` without the slice. */
function isHopByHopAt(s: string, start: number, end: number): boolean {
  switch (end - start) {
    case 2:
      return equalsLowerAt(s, start, 'te');
    case 7:
      return equalsLowerAt(s, start, 'upgrade') || equalsLowerAt(s, start, 'trailer');
    case 10:
      return equalsLowerAt(s, start, 'connection') || equalsLowerAt(s, start, 'keep-alive');
    case 16:
      return equalsLowerAt(s, start, 'proxy-connection');
    case 17:
      return equalsLowerAt(s, start, 'transfer-encoding');
    default:
      return false;
  }
}

/** Lower-cased option names from every Connection header, or `undefined` when there are none. */
function connectionListed(rawHeaders: readonly string[]): string[] | undefined {
  let listed: string[] | undefined;
  const end = rawHeaders.length - (rawHeaders.length % 2);
  for (let i = 0; i < end; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length !== 10 || !equalsLower(name, 'connection')) continue;
    const value = rawHeaders[i + 1]!;
    let start = 0;
    while (start <= value.length) {
      let comma = value.indexOf(',', start);
      if (comma === -1) comma = value.length;
      let a = start;
      let b = comma;
      while (a < b && isOws(value.charCodeAt(a))) a++;
      while (b > a && isOws(value.charCodeAt(b - 1))) b--;
      // The usual options (`keep-alive`, `close`, `upgrade`) name nothing that is not dropped
      // anyway, so they cost no allocation.
      const redundant = isHopByHopAt(value, a, b) || (b - a === 5 && equalsLowerAt(value, a, 'close'));
      if (b > a && !redundant) {
        listed ??= [];
        listed.push(value.slice(a, b).toLowerCase());
      }
      start = comma + 1;
    }
  }
  return listed;
}

function isListed(name: string, listed: readonly string[]): boolean {
  for (const option of listed) {
    if (equalsLower(name, option)) return true;
  }
  return false;
}

function isOws(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

/** `s` equals `lower` (already lower-case) ignoring ASCII case. */
function equalsLower(s: string, lower: string): boolean {
  return s.length === lower.length && equalsLowerAt(s, 0, lower);
}

/** `s` holds `lower` (already lower-case) at `start`, ignoring ASCII case; the caller checks the length. */
function equalsLowerAt(s: string, start: number, lower: string): boolean {
  for (let i = 0; i < lower.length; i++) {
    let c = s.charCodeAt(start + i);
    if (c >= 0x41 && c <= 0x5a) c += 0x20;
    if (c !== lower.charCodeAt(i)) return false;
  }
  return true;
}
