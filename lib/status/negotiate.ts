import { BadQueryError } from '../errors.js'
import { showValue } from '../options.js'
import type { StatusFormat } from './types.js'

export const FORMATS: readonly StatusFormat[] = ['html', 'json', 'csv']

const MEDIA_TYPES: Record<StatusFormat, string> = { json: 'application/json', html: 'text/html', csv: 'text/csv' }
/** On a tie (curl and most HTTP clients accept any type), machines are the likelier askers: JSON first. */
const PREFERENCE: readonly StatusFormat[] = ['json', 'html', 'csv']

interface MediaRange { type: string, subtype: string, q: number }

function mediaRanges (accept: string): MediaRange[] {
  return accept.split(',').map(part => {
    const [range, ...params] = part.split(';')
    const [type = '', subtype = ''] = range.trim().toLowerCase().split('/')
    const q = params.map(param => /^\s*q\s*=\s*(.*?)\s*$/i.exec(param)).find(match => match !== null)
    return { type, subtype, q: q === undefined ? 1 : Math.min(1, Number(q[1]) || 0) }
  })
}

/** 2 for type/subtype, 1 for type/*, 0 for the any-type range, -1 when the range does not match. */
function matchSpecificity (range: MediaRange, type: string, subtype: string): number {
  if (range.type === '*') return range.subtype === '*' ? 0 : -1
  if (range.type !== type) return -1
  return range.subtype === subtype ? 2 : range.subtype === '*' ? 1 : -1
}

/**
 * The format an Accept header asks for: each format takes the q of the most
 * specific range that matches it (as RFC 9110); the highest q wins, then the
 * more specific match, then JSON, HTML, CSV in that order. No header, or
 * nothing acceptable, is JSON.
 */
export function negotiateFormat (accept: string | undefined): StatusFormat {
  if (accept === undefined || accept.trim() === '') return 'json'
  const ranges = mediaRanges(accept)
  let best: { format: StatusFormat, q: number, specificity: number } = { format: 'json', q: 0, specificity: -1 }
  for (const format of PREFERENCE) {
    const [type, subtype] = MEDIA_TYPES[format].split('/')
    let match: { q: number, specificity: number } | undefined
    for (const range of ranges) {
      const specificity = matchSpecificity(range, type, subtype)
      if (specificity >= 0 && (match === undefined || specificity > match.specificity)) match = { q: range.q, specificity }
    }
    if (match !== undefined && match.q > 0 && (match.q > best.q || (match.q === best.q && match.specificity > best.specificity))) {
      best = { format, ...match }
    }
  }
  return best.format
}

/** A query parameter that must be one of `allowed`: a 400 naming them otherwise. */
export function queryValue<T extends string> (value: unknown, allowed: readonly T[], name: string): T | undefined {
  if (value === undefined) return undefined
  if (!allowed.includes(value as T)) {
    throw new BadQueryError(`query "${name}" must be one of ${allowed.join(', ')}, got ${showValue(value)}`)
  }
  return value as T
}
