import { ServerResponse, type ClientRequest, type IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import querystring from 'node:querystring'
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { errors } from 'undici'
import WebSocket, { WebSocketServer, type RawData } from 'ws'
import type { Peer, PeerChange } from './peer.js'
import type { BalancedProxy } from './balanced-proxy.js'
import type { Abandonable, Exchange } from './proxy-attempt.js'
import type { ProxyOptions, ProxySettings, WebSocketHooks } from './proxy-options.js'
import { HTTP_TOKEN } from './options.js'
import { faultOf, type Fault } from './fault.js'
import { leaving } from './proxy-dispatcher.js'
import { errorFor } from './proxy-errors.js'
import { addForwarded, requestHeadersForPeer, responseHeadersForClient, type HeaderFields } from './proxy-headers.js'
import { wsTlsOptions } from './proxy-agent.js'
import { BadRequestError, MalformedResponseError } from './errors.js'

/** The socket and first bytes of an upgrade, kept on the raw request while Fastify routes it. */
const kUpgrade = Symbol('fastify-supervisord.upgrade')
/** The subprotocol the peer chose, for the client side's answer. */
const kProtocol = Symbol('fastify-supervisord.protocol')
/** The upgrade listener shared by every proxy of a server. */
const kListener = Symbol('fastify-supervisord.upgrade-listener')

interface Upgrade { socket: Duplex, head: Buffer }
type UpgradeRequest = IncomingMessage & { [kUpgrade]?: Upgrade, [kProtocol]?: string }
interface SharedListener { prefixes: string[] }
type ServerWithListener = FastifyInstance['server'] & { [kListener]?: SharedListener }

/** Bytes buffered towards one side past which the other side is paused, until that message is written. */
const HIGH_WATER = 1024 * 1024
/** ws's default (100 MiB) lets one client pin that much memory per message: smaller here, raise it with wsServerOptions/wsClientOptions. */
const MAX_PAYLOAD = 16 * 1024 * 1024
/** How long a closing handshake may take when the gateway shuts down, before the sockets are cut. */
const SHUTDOWN_GRACE = 1000
/** The longest close reason a close frame carries (RFC 6455 §5.5: a 125-byte control frame, 2 for the code). */
const MAX_REASON = 123
/** What the client side's handshake must carry (RFC 6455 §4.2.1; ws checks the same). */
const KEY = /^[+/0-9A-Za-z]{22}==$/

/** Handshake headers that ws sets itself on the peer side, and those that describe the client's hop only. */
const NOT_FORWARDED = ['host', 'sec-websocket-key', 'sec-websocket-version', 'sec-websocket-extensions', 'sec-websocket-protocol']

/** A request that came through the server's 'upgrade' event asking for a WebSocket. */
export function isWebSocketUpgrade (raw: IncomingMessage): boolean {
  return (raw as UpgradeRequest)[kUpgrade] !== undefined && raw.headers.upgrade?.toLowerCase() === 'websocket'
}

/** Close codes an endpoint may send (RFC 6455 §7.4, as ws checks them): others become 1011. */
function sendableCode (code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999)
}

/** A close reason cut to the 123 bytes a close frame holds, never inside a UTF-8 sequence. */
export function closeReason (reason: string | Buffer): Buffer {
  const bytes = typeof reason === 'string' ? Buffer.from(reason) : reason
  if (bytes.length <= MAX_REASON) return bytes
  let end = MAX_REASON
  // Back off continuation bytes (10xxxxxx) to the start of the character cut short.
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end--
  return bytes.subarray(0, end)
}

/**
 * Closes a WebSocket with a code and reason it can send: ws throws on a
 * reason over 123 bytes or a code it may not send, and a throw in a socket
 * listener would take the process down (the crash @fastify/http-proxy has
 * when it passes an error message on as a close reason). 1005 (no code) is
 * passed on as a close without a code.
 */
export function safeClose (socket: WebSocket, code: number, reason: string | Buffer = ''): void {
  if (socket.readyState === WebSocket.CLOSING || socket.readyState === WebSocket.CLOSED) return
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.terminate()
    return
  }
  if (code === 1005) socket.close()
  else socket.close(sendableCode(code) ? code : 1011, closeReason(reason))
}

type Side = 'client' | 'peer'

/**
 * One proxied WebSocket: the handshake to a peer (tried on the next peer as
 * a request would be), then the two sockets linked, messages, pings and
 * pongs passed both ways with back-pressure, until either side closes. It
 * holds its peer's in-flight slot from the pick to the end of the session.
 */
class Session implements Abandonable {
  readonly exchange: Exchange<BalancedProxy>
  readonly #proxy: WebSocketProxy
  readonly #dest: string
  /** The subprotocols the client offered (each an HTTP token), passed on for the peer to choose. */
  readonly #protocols: string[]
  target: WebSocket | null = null
  source: WebSocket | null = null
  peer: Peer | null = null
  #timer: NodeJS.Timeout | undefined
  #connected = false
  #answered = false
  #settled = false
  #ended = false
  #peerError: Error | null = null

  constructor (proxy: WebSocketProxy, exchange: Exchange<BalancedProxy>, dest: string, protocols: string[]) {
    this.#proxy = proxy
    this.exchange = exchange
    this.#dest = dest
    this.#protocols = protocols
  }

  /**
   * The client's connection closed. Before the link, the handshake to the
   * peer is given up; once linked, ws owns the client's socket and tells the
   * close, with its code, right after (see #closedBy).
   */
  abandon (): void {
    if (this.source !== null) return
    this.#stopTimer()
    this.#settled = true
    if (this.target !== null) safeClose(this.target, 1001, 'the client went away')
    this.#end()
  }

  /** Closes both sides (drain, shutdown): the client with `clientCode`, the peer with `peerCode`. */
  close (clientCode: number, clientReason: string, peerCode: number, peerReason: string): void {
    if (this.source !== null) safeClose(this.source, clientCode, clientReason)
    if (this.target !== null) safeClose(this.target, peerCode, peerReason)
    this.#end()
  }

  /** Cuts both sockets without a closing handshake (the shutdown grace ran out). */
  terminate (): void {
    this.source?.terminate()
    this.target?.terminate()
  }

  /** Opens the peer side to the exchange's peer, timed as an HTTP attempt: connect, then the handshake's answer. */
  connect (): void {
    const { exchange } = this
    const peer = exchange.peer as Peer
    const proxy = this.#proxy
    this.peer = peer
    this.#connected = false
    this.#answered = false
    this.#settled = false
    this.#peerError = null
    const request = exchange.request
    if (exchange.startedAt === 0) exchange.startedAt = Date.now()
    const url = `${peer.origin.replace(/^http/, 'ws')}${this.#dest}${proxy.queryOf(request)}`
    const target = new WebSocket(url, this.#protocols, {
      maxPayload: MAX_PAYLOAD,
      ...proxy.clientOptions,
      ...(peer.scheme === 'https' ? wsTlsOptions(peer.host, exchange.site.upstream.tls) : {}),
      headers: proxy.headersFor(request) as Record<string, string>,
      perMessageDeflate: proxy.clientOptions.perMessageDeflate ?? false,
      autoPong: false,
      finishRequest: (req: ClientRequest) => {
        req.once('socket', socket => {
          if (!socket.connecting) this.#arm('headers')
          else socket.once('connect', () => this.#arm('headers'))
        })
        req.end()
      }
    })
    this.target = target
    this.#arm('connect')
    target.on('error', error => {
      this.#peerError = error
      if (!this.#settled) this.#failed(this.#answered ? new MalformedResponseError(error.message) : error)
    })
    target.once('upgrade', () => { this.#answered = true })
    target.once('unexpected-response', (req, res) => {
      this.#answered = true
      if (this.#settled) return
      this.#settled = true
      this.#stopTimer()
      proxy.answeredOver(this, req, res)
    })
    target.once('open', () => {
      this.#stopTimer()
      if (this.#settled) return
      this.#settled = true
      proxy.upgradeClient(this)
    })
  }

  #arm (phase: 'connect' | 'headers'): void {
    if (this.#settled) return
    if (phase === 'headers') this.#connected = true
    const ms = phase === 'connect' ? this.#proxy.settings.connectTimeout : this.#proxy.settings.headersTimeout
    clearTimeout(this.#timer)
    this.#timer = setTimeout(() => {
      this.#failed(phase === 'connect'
        ? new errors.ConnectTimeoutError(`no connection to the peer within ${ms} ms`)
        : new errors.HeadersTimeoutError(`no handshake answer within ${ms} ms`))
    }, ms)
    this.#timer.unref()
  }

  #stopTimer (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
  }

  /** Lets go of the peer side's handshake: its late events are not this session's any more. */
  drop (): void {
    const target = this.target
    this.target = null
    target?.removeAllListeners()
    target?.on('error', () => {})
    target?.terminate()
  }

  #failed (error: Error): void {
    this.#stopTimer()
    this.#settled = true
    this.drop()
    const peer = this.peer as Peer
    const fault = faultOf(error, { sent: this.#connected, answered: false, clientBodyFailed: false, peerLeaving: leaving(peer) })
    this.#proxy.handshakeFailed(this, peer, fault)
  }

  /** Both sides are open: link them. */
  link (source: WebSocket, target: WebSocket): void {
    this.source = source
    if (this.#ended) {
      safeClose(source, 1001, 'the peer went away')
      return
    }
    const { log } = this.#proxy
    const hooks = this.#proxy.hooks
    const context = { log }
    const pass = (from: WebSocket, to: WebSocket, hook: typeof hooks.onIncomingMessage, name: string) => {
      const resume = (): void => { if (from.isPaused) from.resume() }
      return (data: RawData, isBinary: boolean): void => {
        if (hook !== undefined) {
          try {
            hook(context, source, target, { data, binary: isBinary })
          } catch (err) {
            log.error({ err }, `proxy ws error from ${name} hook`)
          }
        }
        if (to.bufferedAmount < HIGH_WATER) {
          to.send(data, { binary: isBinary })
          return
        }
        // The other side reads slower than this one sends: stop reading this one until it caught up.
        from.pause()
        to.send(data, { binary: isBinary }, resume)
      }
    }
    source.on('message', pass(source, target, hooks.onIncomingMessage, 'onIncomingMessage'))
    target.on('message', pass(target, source, hooks.onOutgoingMessage, 'onOutgoingMessage'))
    source.on('ping', data => target.ping(data))
    source.on('pong', data => target.pong(data))
    target.on('ping', data => source.ping(data))
    target.on('pong', data => source.pong(data))
    source.on('error', () => {})
    source.on('close', (code, reason) => this.#closedBy('client', code, reason))
    target.on('close', (code, reason) => this.#closedBy('peer', code, reason))
    if (hooks.onConnect !== undefined) {
      try {
        hooks.onConnect(context, source, target)
      } catch (err) {
        log.error({ err }, 'proxy ws error from onConnect hook')
      }
    }
  }

  /** One side closed: the other is closed with the same code (a dropped peer is the peer's fault, answered 1014). */
  #closedBy (side: Side, code: number, reason: Buffer): void {
    if (this.#ended) return
    const source = this.source as WebSocket
    const target = this.target as WebSocket
    if (side === 'client') {
      safeClose(target, code === 1006 ? 1001 : code, code === 1006 ? 'the client went away' : reason)
    } else if (code === 1006) {
      const peer = this.peer as Peer
      const fault = faultOf(this.#peerError ?? new Error('the peer dropped the connection'),
        { sent: true, answered: true, clientBodyFailed: false, peerLeaving: leaving(peer) })
      this.exchange.site.dispatcher.charge(peer, fault)
      safeClose(source, fault.party === 'nobody' ? 1012 : 1014, fault.party === 'nobody' ? 'service restart' : 'bad gateway')
    } else {
      safeClose(source, code, reason)
    }
    this.#end()
  }

  #end (): void {
    if (this.#ended) return
    this.#ended = true
    this.#proxy.ended(this)
    this.exchange.release()
    const onDisconnect = this.#proxy.hooks.onDisconnect
    if (onDisconnect !== undefined && this.source !== null) {
      try {
        onDisconnect({ log: this.#proxy.log }, this.source)
      } catch (err) {
        this.#proxy.log.error({ err }, 'proxy ws error from onDisconnect hook')
      }
    }
  }
}

/**
 * WebSocket proxying for one `proxy` registration, on `ws`: the server's
 * upgrades are routed through Fastify (the route's hooks run, as for any
 * request), then each is balanced like a request — the same pick, held
 * during a cold start, queued at `maxConns` — and the peer's handshake is
 * completed before the client's, so that a peer that refuses is charged and
 * the next one tried while the client still waits for its 101. A peer taken
 * out of rotation (drain, maint, stopping) has its sessions closed with 1012
 * after `wsDrainTimeout`.
 *
 * Why not @fastify/http-proxy's own WebSocket support: it answers the
 * client's upgrade before it connects to the upstream, so no failover is
 * possible; it passes error messages on as close reasons, which ws refuses
 * over 123 bytes with a throw in a socket listener (a crash); and it keeps
 * no handle on a session per peer, so drain could not close them.
 */
export class WebSocketProxy {
  readonly settings: ProxySettings
  readonly log: FastifyInstance['log']
  readonly hooks: WebSocketHooks
  readonly clientOptions: NonNullable<ProxyOptions['wsClientOptions']>
  readonly #fastify: FastifyInstance
  readonly #wss: WebSocketServer
  readonly #wsOptions: NonNullable<ProxyOptions['wsClientOptions']>
  /** Open sessions (and handshakes) per peer. */
  readonly #sessions = new Map<Peer, Set<Session>>()
  /** A pending close of a leaving peer's sessions. */
  readonly #drains = new Map<Peer, NodeJS.Timeout>()

  constructor (fastify: FastifyInstance, options: ProxyOptions, settings: ProxySettings) {
    this.#fastify = fastify
    this.settings = settings
    this.log = fastify.log
    this.hooks = options.wsHooks ?? {}
    const { headers: _headers, rewriteRequestHeaders: _rewrite, queryString: _query, ...client } = options.wsClientOptions ?? {}
    this.clientOptions = client
    this.#wss = new WebSocketServer({
      maxPayload: MAX_PAYLOAD,
      ...options.wsServerOptions,
      noServer: true,
      clientTracking: false,
      autoPong: false,
      handleProtocols: (_protocols, request) => (request as UpgradeRequest)[kProtocol] ?? false
    })
    this.#wss.on('error', err => this.log.error({ err }, 'proxy ws server error'))
    this.#wsOptions = options.wsClientOptions ?? {}
    listenForUpgrades(fastify, fastify.prefix)
    fastify.upstreams.on('change', this.#onChange)
  }

  /** The route's handler found an upgrade: balance it. */
  handle (exchange: Exchange<BalancedProxy>, dest: string): void {
    const { request, reply } = exchange
    const key = request.headers['sec-websocket-key']
    const version = request.headers['sec-websocket-version']
    const protocols = this.protocolsOf(request)
    if (request.method !== 'GET' || typeof key !== 'string' || !KEY.test(key) || (version !== '13' && version !== '8') || protocols === null) {
      reply.send(new BadRequestError(exchange.site.upstream.name, 'not a valid WebSocket handshake'))
      return
    }
    const session = new Session(this, exchange, dest, protocols)
    exchange.attempt = session
    exchange.site.acquire(exchange, error => {
      if (error !== undefined) {
        exchange.site.refuse(exchange, error)
        return
      }
      this.#started(session)
      session.connect()
    })
  }

  #started (session: Session): void {
    const peer = session.exchange.peer as Peer
    let sessions = this.#sessions.get(peer)
    if (sessions === undefined) this.#sessions.set(peer, sessions = new Set())
    sessions.add(session)
  }

  /** A session is over (or never opened): forget it. */
  ended (session: Session): void {
    if (session.peer === null) return
    const sessions = this.#sessions.get(session.peer)
    sessions?.delete(session)
    if (sessions?.size === 0) {
      this.#sessions.delete(session.peer)
      clearTimeout(this.#drains.get(session.peer))
      this.#drains.delete(session.peer)
    }
  }

  /** The peer side is open: now the client gets its 101, and the two are linked. */
  upgradeClient (session: Session): void {
    const { exchange } = session
    const target = session.target as WebSocket
    if (exchange.clientGone) {
      session.abandon()
      return
    }
    const raw = exchange.request.raw as UpgradeRequest
    const upgrade = raw[kUpgrade] as Upgrade
    raw[kProtocol] = target.protocol === '' ? undefined : target.protocol
    exchange.reply.hijack()
    this.#wss.handleUpgrade(raw, upgrade.socket, upgrade.head, source => session.link(source, target))
  }

  /** The peer answered the handshake without upgrading: a listed status goes to the next peer, any other answer to the client. */
  answeredOver (session: Session, req: ClientRequest, res: IncomingMessage): void {
    const { exchange } = session
    const peer = session.peer as Peer
    const site = exchange.site
    if (site.settings.nextUpstream.statuses.has(res.statusCode ?? 0)) {
      const fault = faultOf(res.statusCode ?? 0, { sent: true, answered: true, clientBodyFailed: false, peerLeaving: leaving(peer) })
      site.dispatcher.charge(peer, fault)
      session.drop()
      req.destroy()
      if (this.#retry(session, peer, fault)) return
    } else {
      peer.recordSuccess()
    }
    this.ended(session)
    const headers = { ...res.headers }
    responseHeadersForClient(headers)
    res.once('close', () => session.drop())
    // Its slot is given back when the client's connection closes, after the answer (see BalancedProxy.exchange).
    exchange.reply.code(res.statusCode ?? 502).headers(headers).send(res)
  }

  /** The handshake to a peer failed: the next peer, or the client gets the error (over HTTP: it has no 101 yet). */
  handshakeFailed (session: Session, peer: Peer, fault: Fault): void {
    const { exchange } = session
    exchange.site.dispatcher.charge(peer, fault)
    if (exchange.clientGone || this.#retry(session, peer, fault)) return
    this.ended(session)
    exchange.release()
    if (!exchange.reply.sent) exchange.reply.send(errorFor(fault, exchange.site.upstream.name, peer, exchange.site.settings.exposeErrors))
  }

  #retry (session: Session, peer: Peer, fault: Fault): boolean {
    const { exchange } = session
    const dispatcher = exchange.site.dispatcher
    const next = dispatcher.nextPeer(exchange, peer, fault, true)
    if (next === undefined) return false
    this.ended(session)
    dispatcher.moveTo(exchange, peer, next)
    this.#started(session)
    session.connect()
    return true
  }

  /** The peer side's query string: the client's, or wsClientOptions.queryString's (as @fastify/http-proxy). */
  queryOf (request: FastifyRequest): string {
    const at = request.url.indexOf('?')
    const search = at === -1 ? '' : request.url.slice(at)
    const option = this.#wsOptions.queryString
    if (typeof option === 'function') return `?${option(search, request.url, request as never)}`
    if (option !== undefined) return `?${querystring.stringify(option as querystring.ParsedUrlQueryInput)}`
    return search
  }

  /** The client's subprotocols, each an HTTP token (RFC 6455 §4.1), or null when one is not: the client's bad handshake, refused before a peer is taken. */
  protocolsOf (request: FastifyRequest): string[] | null {
    const header = request.headers['sec-websocket-protocol']
    if (header === undefined) return []
    const protocols = [...new Set(header.split(',').map(protocol => protocol.trim()).filter(Boolean))]
    return protocols.every(protocol => HTTP_TOKEN.test(protocol)) ? protocols : null
  }

  /**
   * The client's handshake headers, end to end, as nginx forwards them (the
   * hop-by-hop and handshake fields aside: ws makes its own), with the
   * forwarded set and the preserved Host as for requests, then
   * wsClientOptions.headers and rewriteRequestHeaders.
   */
  headersFor (request: FastifyRequest): Record<string, string | string[] | undefined> {
    const headers: HeaderFields = { ...request.headers }
    requestHeadersForPeer(headers)
    for (const name of NOT_FORWARDED) delete headers[name]
    if (this.settings.xForwarded) {
      addForwarded(headers, { remoteAddress: request.raw.socket?.remoteAddress, protocol: request.protocol, hostname: request.hostname, port: request.port })
    }
    if (this.settings.preserveHost && request.headers.host !== undefined) headers.host = request.headers.host
    const merged = { ...headers, ...this.#wsOptions.headers } as Record<string, string | string[] | undefined>
    return this.#wsOptions.rewriteRequestHeaders === undefined ? merged : this.#wsOptions.rewriteRequestHeaders(merged, request)
  }

  /** A peer leaving rotation has its sessions closed after wsDrainTimeout; back in rotation, they stay. */
  readonly #onChange = (change: PeerChange): void => {
    if (change.field !== 'admin' && change.field !== 'process') return
    for (const [peer, sessions] of this.#sessions) {
      if (peer.upstream !== change.upstream || peer.index !== change.index) continue
      const out = peer.admin !== 'ready' || peer.process === 'stopping'
      const pending = this.#drains.get(peer)
      if (out && pending === undefined) {
        const timer = setTimeout(() => {
          this.#drains.delete(peer)
          for (const session of [...sessions]) session.close(1012, 'service restart', 1001, 'the gateway drains this peer')
        }, this.settings.wsDrainTimeout)
        timer.unref()
        this.#drains.set(peer, timer)
      } else if (!out && pending !== undefined) {
        clearTimeout(pending)
        this.#drains.delete(peer)
      }
    }
  }

  /** The server is closing: every session gets 1001, and is cut if its close handshake has not ended within a second. */
  async close (): Promise<void> {
    this.#fastify.upstreams.off('change', this.#onChange)
    for (const timer of this.#drains.values()) clearTimeout(timer)
    this.#drains.clear()
    const open = [...this.#sessions.values()].flatMap(sessions => [...sessions])
    for (const session of open) session.close(1001, 'the gateway is shutting down', 1001, 'the gateway is shutting down')
    if (open.length > 0) {
      await new Promise(resolve => setTimeout(resolve, Math.min(SHUTDOWN_GRACE, 50 * open.length)).unref())
      for (const session of open) session.terminate()
    }
    this.#wss.close()
  }
}

/**
 * One 'upgrade' listener per server, for every proxy with `websocket: true`
 * on it: the upgrade is routed through Fastify, with its socket kept on the
 * raw request for the route's handler. Alongside other upgrade listeners
 * (@fastify/websocket), only upgrades under a proxy's prefix are taken.
 */
function listenForUpgrades (fastify: FastifyInstance, prefix: string): void {
  const server = fastify.server as ServerWithListener
  const existing = server[kListener]
  if (existing !== undefined) {
    existing.prefixes.push(prefix)
    return
  }
  const shared: SharedListener = { prefixes: [prefix] }
  server[kListener] = shared
  server.on('upgrade', (raw: UpgradeRequest, socket: Duplex, head: Buffer) => {
    if (server.listenerCount('upgrade') > 1 && !underPrefix(raw.url ?? '/', shared.prefixes)) return
    // The HTTP server lets go of the socket with the upgrade: without a
    // listener of our own, a reset from the client would be thrown.
    socket.on('error', () => {})
    raw[kUpgrade] = { socket, head }
    const response = new ServerResponse(raw)
    response.assignSocket(socket as never)
    response.once('finish', () => socket.destroy())
    fastify.routing(raw, response)
  })
}

function underPrefix (url: string, prefixes: readonly string[]): boolean {
  const path = url.split('?', 1)[0]
  return prefixes.some(prefix => {
    const base = prefix.endsWith('/') ? prefix.slice(0, -1) : prefix
    return base === '' || path === base || path.startsWith(`${base}/`)
  })
}
