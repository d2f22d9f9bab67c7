// Starting worker threads from both compiled JavaScript (dist/) and TypeScript run through tsx
// (tests, `npm run vmbus`): a `.ts` entry needs tsx's loader inside the worker too.
import { Worker, type WorkerOptions } from 'node:worker_threads';

/** Starts a worker on the module at `url` (a sibling `.ts` or `.js` file, resolved by the caller). */
export function startWorker(url: URL, options: WorkerOptions = {}): Worker {
  const isTypeScript = url.pathname.endsWith('.ts');
  const execArgv = isTypeScript ? ['--import', 'tsx', ...(options.execArgv ?? [])] : options.execArgv;
  return new Worker(url, { ...options, execArgv });
}

/** Resolves `name` (without extension) next to `base` (an `import.meta.url`), keeping base's extension. */
export function siblingModule(base: string, name: string): URL {
  const ext = base.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./${name}${ext}`, base);
}
