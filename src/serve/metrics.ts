// Counters and gauges in Prometheus' text exposition format (version 0.0.4).

interface Metric {
  help: string;
  type: 'counter' | 'gauge';
  /** Value per label set ('' for none), or a function read at scrape time. */
  values: Map<string, number> | (() => number);
}

export class Metrics {
  private readonly metrics = new Map<string, Metric>();
  private readonly scrapeHooks: (() => void)[] = [];

  /** A counter this registry counts (inc), or one kept elsewhere and read when scraped. */
  counter(name: string, help: string, read?: () => number): void {
    this.metrics.set(name, { help, type: 'counter', values: read ?? new Map() });
  }
  /** A gauge read when scraped. */
  gauge(name: string, help: string, read: () => number): void {
    this.metrics.set(name, { help, type: 'gauge', values: read });
  }
  /** Runs before each scrape's reads (to take one snapshot that several metrics read). */
  onScrape(hook: () => void): void {
    this.scrapeHooks.push(hook);
  }

  /** Adds to a counter, optionally with labels ({ status: '200' }). */
  inc(name: string, by = 1, labels: Record<string, string> = {}): void {
    const m = this.metrics.get(name);
    if (!m || typeof m.values === 'function') throw new RangeError(`internal: no counter ${name}`);
    const key = Object.entries(labels)
      .map(([k, v]) => `${k}="${v.replace(/[\\"\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`)
      .join(',');
    m.values.set(key, (m.values.get(key) ?? 0) + by);
  }

  render(): string {
    for (const h of this.scrapeHooks) h();
    const out: string[] = [];
    for (const [name, m] of this.metrics) {
      out.push(`# HELP ${name} ${m.help}`, `# TYPE ${name} ${m.type}`);
      if (typeof m.values === 'function') out.push(`${name} ${m.values()}`);
      else if (m.values.size === 0) out.push(`${name} 0`);
      else for (const [k, v] of m.values) out.push(k ? `${name}{${k}} ${v}` : `${name} ${v}`);
    }
    return out.join('\n') + '\n';
  }
}
