/**
 * Summarises V8 CPU profiles (`node --cpu-prof`, e.g. from `npm run bench -- --profile DIR`):
 * the top functions by self time, and self time by file (node internals, each dependency, each
 * of our source files), so one can see where a process spends its CPU.
 *
 *   node --import tsx bench/profile-summary.ts DIR|FILE.cpuprofile... [--top N] [--callers NAME] [--from S]
 *
 * `--from S` ignores the first S seconds of each profile (start-up: module loading and compiling).
 *
 * `--callers NAME` also lists the call stacks (innermost first) under which the function NAME spent
 * its self time, e.g. `--callers writeBuffer` to tell a TLS write from a plain socket write.
 */
import fs from 'node:fs';
import path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function shortUrl(url: string): string {
  if (!url) return '(native)';
  const u = url.replace(/^file:\/\//, '');
  const nm = u.lastIndexOf('node_modules/');
  if (nm !== -1) {
    const rest = u.slice(nm + 'node_modules/'.length).split('/');
    const pkg = rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]!;
    return `${pkg}:${rest.slice(pkg.includes('/') ? 2 : 1).join('/')}`;
  }
  const src = u.indexOf('/src/');
  if (src !== -1) return u.slice(src + 1);
  return u;
}

function fileGroup(url: string): string {
  if (!url) return '(native / VM)';
  if (url.startsWith('node:')) return url;
  const s = shortUrl(url);
  const colon = s.indexOf(':');
  return url.includes('node_modules/') && colon !== -1 ? `npm ${s.slice(0, colon)}` : s;
}

function frameName(cf: CallFrame): string {
  return `${cf.functionName || '(anonymous)'}  ${shortUrl(cf.url)}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
}

function summarise(file: string, top: number, callers: string | undefined, fromS: number): string {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map<number, ProfileNode>();
  const parent = new Map<number, number>();
  for (const n of profile.nodes) {
    byId.set(n.id, n);
    for (const c of n.children ?? []) parent.set(c, n.id);
  }
  const selfUs = new Map<number, number>();
  let t = profile.startTime;
  const from = profile.startTime + fromS * 1e6;
  let totalUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i] ?? 0;
    t += dt;
    if (t < from) continue;
    totalUs += dt;
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + dt);
  }
  let idleUs = 0;
  const fn = new Map<string, number>();
  const files = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const cf = byId.get(id)!.callFrame;
    if (cf.functionName === '(idle)') {
      idleUs += us;
      continue;
    }
    const key = frameName(cf);
    fn.set(key, (fn.get(key) ?? 0) + us);
    const g = fileGroup(cf.url);
    files.set(g, (files.get(g) ?? 0) + us);
  }
  const busyUs = totalUs - idleUs;
  const pct = (us: number) => `${((us / busyUs) * 100).toFixed(1).padStart(5)}%`;
  const ms = (us: number) => `${(us / 1000).toFixed(0).padStart(7)} ms`;
  const lines = [
    `== ${path.relative(process.cwd(), file)}: ${(totalUs / 1e6).toFixed(1)} s profiled, ${(busyUs / 1e6).toFixed(1)} s busy`,
    '-- top functions by self time (% of busy)',
  ];
  for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top))
    lines.push(`${ms(us)} ${pct(us)}  ${k}`);
  lines.push('-- self time by file');
  for (const [k, us] of [...files].sort((a, b) => b[1] - a[1]).slice(0, top))
    lines.push(`${ms(us)} ${pct(us)}  ${k}`);
  if (callers) {
    const stacks = new Map<string, number>();
    for (const [id, us] of selfUs) {
      if (byId.get(id)!.callFrame.functionName !== callers) continue;
      const chain: string[] = [];
      for (let p = parent.get(id); p !== undefined && chain.length < 8; p = parent.get(p)) {
        const cf = byId.get(p)!.callFrame;
        if (cf.functionName === '(root)') break;
        chain.push(frameName(cf).replace(/\s+/g, ' '));
      }
      const key = chain.join(' < ');
      stacks.set(key, (stacks.get(key) ?? 0) + us);
    }
    lines.push(`-- where ${callers} spent its self time (callers, innermost first)`);
    for (const [k, us] of [...stacks].sort((a, b) => b[1] - a[1]).slice(0, top))
      lines.push(`${ms(us)} ${pct(us)}  ${k}`);
  }
  return lines.join('\n');
}

const args = process.argv.slice(2);
let top = 25;
let callers: string | undefined;
let fromS = 0;
const inputs: string[] = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--top') top = Number(args[++i]);
  else if (args[i] === '--callers') callers = args[++i];
  else if (args[i] === '--from') fromS = Number(args[++i]);
  else inputs.push(args[i]!);
}
if (inputs.length === 0) {
  process.stderr.write(
    'usage: node --import tsx bench/profile-summary.ts DIR|FILE.cpuprofile... [--top N] [--callers NAME] [--from S]\n',
  );
  process.exit(2);
}
for (const input of inputs) {
  const files = fs.statSync(input).isDirectory()
    ? (fs.readdirSync(input, { recursive: true }) as string[])
        .filter((f) => f.endsWith('.cpuprofile'))
        .sort()
        .map((f) => path.join(input, f))
    : [input];
  for (const f of files) process.stdout.write(`${summarise(f, top, callers, fromS)}\n\n`);
}
