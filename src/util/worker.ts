// Starting worker threads from both compiled JavaScript (dist/) and TypeScript run through tsx
// (tests, `npm run vmbus`). Node 20 does not honour `--import tsx` in a worker's execArgv, so a
// `.ts` entry is started on a tiny JavaScript bootstrap that loads it through tsx's `tsImport`.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** Starts a worker on the module at `url` (a `.ts` or `.js` file, usually from `siblingModule`). */
export function startWorker(url: URL, options: WorkerOptions = {}): Worker {
  if (!url.pathname.endsWith('.ts')) return new Worker(url, options);
  const api = import.meta.resolve('tsx/esm/api');
  const code = `import { tsImport } from ${JSON.stringify(api)};\nawait tsImport(${JSON.stringify(url.href)}, ${JSON.stringify(url.href)});\n`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(code)}`), options);
}

/** Resolves `name` (without extension) next to `base` (an `import.meta.url`), keeping base's extension. */
export function siblingModule(base: string, name: string): URL {
  const ext = base.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./${name}${ext}`, base);
}
