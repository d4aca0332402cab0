// The peer for `cargo run --release -p imaging --example sharp_task`: sharp's own benchmark task
// (decode the 2725×2225 JPEG, Lanczos3 to 720×588, JPEG q80) on the same fixture, for a fixed
// time with `--inflight` operations in flight and libvips at `--vips` threads per operation.
// Run it with UV_THREADPOOL_SIZE at least the number in flight (sharp-task.sh does). One JSON line.
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
// `--make-fixture SRC`: writes the photo fixture (SRC cropped to sharp's aspect and scaled to
// 2725×2225, q90) to `--fixture` and exits.
if (process.argv.includes('--make-fixture')) {
  await sharp(arg('--make-fixture')).resize(2725, 2225).jpeg({ quality: 90 }).toFile(arg('--fixture'));
  process.exit(0);
}
const inflight = Number(arg('--inflight', '1'));
const vips = Number(arg('--vips', '1'));
const seconds = Number(arg('--seconds', '10'));
const input = readFileSync(arg('--fixture', join(tmpdir(), 'clinic-sharp-task-2725x2225.jpg')));
sharp.concurrency(vips);
sharp.cache(false);
// sharp's benchmark: resize(width, height) with the default fit (cover) and kernel (lanczos3).
const once = () => sharp(input).resize(720, 588).jpeg({ quality: 80 }).toBuffer();
const out = await once();
const meta = await sharp(out).metadata();
if (meta.width !== 720 || meta.height !== 588) throw new Error(`unexpected output ${meta.width}x${meta.height}`);
let ops = 0;
const start = process.hrtime.bigint();
const end = start + BigInt(Math.round(seconds * 1e9));
await Promise.all(Array.from({ length: inflight }, async () => {
  while (process.hrtime.bigint() < end) { await once(); ops++; }
}));
const elapsed = Number(process.hrtime.bigint() - start) / 1e9;
console.log(JSON.stringify({
  impl: `sharp ${sharp.versions.sharp} (libvips ${sharp.versions.vips})`, inflight, vips,
  threadpool: Number(process.env.UV_THREADPOOL_SIZE || 4), ops, seconds: Number(elapsed.toFixed(3)),
  ops_per_sec: Number((ops / elapsed).toFixed(2)), input_bytes: input.length, output_bytes: out.length,
}));
