import t from 'tap'
import { addForwarded, requestHeadersForPeer, responseHeadersForClient, type HeaderFields } from '../lib/proxy-headers.js'

// The header rules on their own, as RFC 9110 §7.6.1 and nginx's usual
// forwarded set say; the proxy tests show them on the wire.

const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'transfer-encoding', 'upgrade', 'http2-settings']

function withHopByHop (extra: HeaderFields = {}): HeaderFields {
  return { ...Object.fromEntries(HOP_BY_HOP.map(name => [name, 'x'])), host: 'example.test', accept: '*/*', ...extra }
}

t.test('hop-by-hop fields go both ways; the rest stays', async t => {
  for (const [side, strip] of [['request', requestHeadersForPeer], ['response', responseHeadersForClient]] as const) {
    const headers = withHopByHop()
    strip(headers)
    t.same(headers, { host: 'example.test', accept: '*/*' }, `${side}: every hop-by-hop field is dropped`)
  }
})

t.test('the fields Connection names are hop-by-hop too, whatever their case and spacing; never Host', async t => {
  const headers: HeaderFields = { connection: ' X-Trace ,,close, host', 'x-trace': '1', close: 'y', host: 'example.test', 'x-kept': 'k' }
  requestHeadersForPeer(headers)
  t.same(headers, { host: 'example.test', 'x-kept': 'k' })
  const listed: HeaderFields = { connection: ['x-a'] as unknown as string, 'x-a': '1' }
  responseHeadersForClient(listed)
  t.same(listed, { 'x-a': '1' }, 'a Connection that is not one string names nothing (it is dropped itself)')
})

t.test('Expect is dropped on the way to the peer only: the gateway answered 100-continue itself', async t => {
  const request: HeaderFields = { expect: '100-continue', host: 'h' }
  requestHeadersForPeer(request)
  t.same(request, { host: 'h' })
  const response: HeaderFields = { expect: '100-continue' }
  responseHeadersForClient(response)
  t.same(response, { expect: '100-continue' })
})

t.test('forwarded set: the client appended to the chain, this hop\'s scheme, host and port', async t => {
  const from = { remoteAddress: '203.0.113.7', protocol: 'http', hostname: 'shop.example.com', port: 8080 }
  const fresh: HeaderFields = {}
  addForwarded(fresh, from)
  t.same(fresh, { 'x-forwarded-for': '203.0.113.7', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'shop.example.com', 'x-forwarded-port': '8080' })
  const chained: HeaderFields = { 'x-forwarded-for': '198.51.100.1', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.test', 'x-forwarded-port': '1' }
  addForwarded(chained, from)
  t.same(chained, { 'x-forwarded-for': '198.51.100.1, 203.0.113.7', 'x-forwarded-proto': 'http', 'x-forwarded-host': 'shop.example.com', 'x-forwarded-port': '8080' },
    'the chain is kept and appended to; the client\'s own proto, host and port are replaced')
  const repeated: HeaderFields = { 'x-forwarded-for': ['10.0.0.1', '10.0.0.2'] }
  addForwarded(repeated, from)
  t.equal(repeated['x-forwarded-for'], '10.0.0.1, 10.0.0.2, 203.0.113.7', 'repeated fields joined, as one list')
  const empty: HeaderFields = { 'x-forwarded-for': '' }
  addForwarded(empty, { ...from, remoteAddress: undefined, port: null })
  t.equal(empty['x-forwarded-for'], '', 'no chain and no address: nothing to append to, nothing appended')
  t.equal(empty['x-forwarded-port'], '80', 'no port asked: the scheme\'s')
  const tls: HeaderFields = {}
  addForwarded(tls, { ...from, protocol: 'https', port: null })
  t.same([tls['x-forwarded-proto'], tls['x-forwarded-port']], ['https', '443'])
  const numeric: HeaderFields = { 'x-forwarded-for': 7 }
  addForwarded(numeric, from)
  t.equal(numeric['x-forwarded-for'], '7, 203.0.113.7')
})
