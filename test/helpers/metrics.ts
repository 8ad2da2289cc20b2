import parsePrometheusTextFormat, { type ParsedFamily, type ParsedSample } from 'parse-prometheus-text-format'
import type { FastifyInstance } from 'fastify'

/**
 * One scrape, read by a real Prometheus text parser (which throws on a line
 * that is not valid text format). The parser merges a labelled histogram's
 * series into one (it keeps neither their labels nor their sums and counts):
 * the `_bucket`, `_sum` and `_count` lines are read a second time without
 * their TYPE line, as plain samples with their labels.
 */
export class Scrape {
  readonly families: Map<string, ParsedFamily>
  readonly #series: Map<string, ParsedFamily>

  constructor (readonly text: string) {
    this.families = new Map(parsePrometheusTextFormat(text).map(family => [family.name, family]))
    const untyped = text.split('\n').filter(line => !/^# TYPE \S+ histogram$/.test(line)).join('\n')
    // Untyped, each series' lines are a family of their own: gathered by name.
    this.#series = new Map()
    for (const family of parsePrometheusTextFormat(untyped)) {
      const seen = this.#series.get(family.name)
      if (seen === undefined) this.#series.set(family.name, family)
      else seen.metrics.push(...family.metrics)
    }
  }

  family (name: string): ParsedFamily {
    const family = this.families.get(`fastify_supervisord_${name}`)
    if (family === undefined) throw new Error(`no family fastify_supervisord_${name} in the scrape`)
    return family
  }

  /** The sample of `name` whose labels include `labels` (undefined if none). */
  sample (name: string, labels: Record<string, string> = {}): ParsedSample | undefined {
    return this.family(name).metrics.find(sample => Object.entries(labels).every(([key, value]) => sample.labels?.[key] === value))
  }

  /** Its value as a number (NaN when there is no such sample). */
  value (name: string, labels: Record<string, string> = {}): number {
    return Number(this.sample(name, labels)?.value ?? NaN)
  }

  /** A histogram's count and sum, and how many observations were at or under `le`. */
  histogram (name: string, labels: Record<string, string>, le?: string): { count: number, sum: number, under: number } {
    if (this.family(name).type !== 'HISTOGRAM') throw new Error(`${name} is not a histogram`)
    const read = (suffix: string, extra: Record<string, string> = {}): number => {
      const series = this.#series.get(`fastify_supervisord_${name}${suffix}`)
      const wanted = { ...labels, ...extra }
      const sample = series?.metrics.find(s => Object.entries(wanted).every(([key, value]) => s.labels?.[key] === value))
      return Number(sample?.value ?? NaN)
    }
    return { count: read('_count'), sum: read('_sum'), under: le === undefined ? NaN : read('_bucket', { le }) }
  }
}

export async function scrape (app: FastifyInstance, url = '/metrics'): Promise<Scrape> {
  const res = await app.inject({ url })
  if (res.statusCode !== 200) throw new Error(`GET ${url} answered ${res.statusCode}: ${res.body}`)
  return new Scrape(res.body)
}
