import Negotiator from 'negotiator'
import { BadQueryError } from '../errors.js'
import { showValue } from '../options.js'
import type { StatusFormat } from './types.js'

export const FORMATS: readonly StatusFormat[] = ['html', 'json', 'csv']

const MEDIA_TYPES: Record<StatusFormat, string> = { json: 'application/json', html: 'text/html', csv: 'text/csv' }
/** On a tie (curl and most HTTP clients accept any type), machines are the likelier askers: JSON first. */
const PREFERENCE = (['json', 'html', 'csv'] as const).map(format => MEDIA_TYPES[format])
const FORMAT_OF = new Map(Object.entries(MEDIA_TYPES).map(([format, type]) => [type, format as StatusFormat]))

/**
 * The format an Accept header asks for, by RFC 9110's rules (negotiator: the
 * highest q, then the most specific match, then JSON, HTML, CSV in that
 * order). No header, or nothing acceptable, is JSON.
 */
export function negotiateFormat (accept: string | undefined): StatusFormat {
  const type = new Negotiator({ headers: { accept } }).mediaType(PREFERENCE)
  return (type === undefined ? undefined : FORMAT_OF.get(type)) ?? 'json'
}

/** A query parameter that must be one of `allowed`: a 400 naming them otherwise. */
export function queryValue<T extends string> (value: unknown, allowed: readonly T[], name: string): T | undefined {
  if (value === undefined) return undefined
  if (!allowed.includes(value as T)) {
    throw new BadQueryError(`query "${name}" must be one of ${allowed.join(', ')}, got ${showValue(value)}`)
  }
  return value as T
}
