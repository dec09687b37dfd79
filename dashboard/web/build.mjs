// Builds dist/index.html, dist/app.js and dist/app.css from src/.
// The output is deterministic: no timestamps, no content hashes, no source maps.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = dirname(fileURLToPath(import.meta.url));
const dist = join(root, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist, { recursive: true });

await build({
  absWorkingDir: root,
  entryPoints: { app: 'src/main.js' }, // imports the CSS, which esbuild writes to app.css
  outdir: 'dist',
  bundle: true,
  minify: true,
  format: 'iife',
  target: ['es2020'],
  sourcemap: false,
  legalComments: 'none',
  charset: 'utf8',
  logLevel: 'warning',
});
copyFileSync(join(root, 'src/index.html'), join(dist, 'index.html'));

const expected = ['app.css', 'app.js', 'index.html'];
const got = readdirSync(dist).sort();
if (got.join() !== expected.join()) {
  console.error(`dist/ holds ${got.join(', ')}, expected ${expected.join(', ')}`);
  process.exit(1);
}
console.log('built dist/: ' + got.join(', '));
