// Peer measurement for the imaging pipeline: sharp (libvips) does the same work on the same
// fixtures as `cargo run --release -p imaging --example pipeline_bench` (run that first): decode,
// auto-orient, strip metadata, a 1280 px preview and a 256 px thumbnail as JPEG q82. One thread,
// as our pipeline uses one per image.
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';

sharp.concurrency(1);
sharp.cache(false);
const pct = (v, p) => { const s = [...v].sort((a, b) => a - b); return s[Math.round((s.length - 1) * p)]; };
console.log(`sharp ${sharp.versions.sharp}, libvips ${sharp.versions.vips}, concurrency 1`);
for (const [w, h] of [[4000, 3000], [3000, 2000]]) {
  const input = readFileSync(join(tmpdir(), `clinic-bench-${w}x${h}.jpg`));
  const once = async () => {
    const preview = await sharp(input).rotate().resize(1280, 1280, { fit: 'inside', withoutEnlargement: true })
      .jpeg({ quality: 82 }).toBuffer();
    await sharp(preview).resize(256, 256, { fit: 'inside' }).jpeg({ quality: 82 }).toBuffer();
  };
  await once();
  const ms = [];
  for (let i = 0; i < 15; i++) { const t = process.hrtime.bigint(); await once(); ms.push(Number(process.hrtime.bigint() - t) / 1e6); }
  console.log(`${Math.round(w * h / 1e6)} MP ${w}x${h}: p50 ${pct(ms, 0.5).toFixed(1)} ms, p90 ${pct(ms, 0.9).toFixed(1)} ms`);
}
