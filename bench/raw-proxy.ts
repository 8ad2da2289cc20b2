import http from 'node:http'

// Hop-by-hop headers (RFC 9110 §7.6.1) are the connection's, not the message's.
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']

function endToEnd (headers: http.IncomingHttpHeaders): http.OutgoingHttpHeaders {
  const copy: http.OutgoingHttpHeaders = { ...headers }
  for (const name of HOP_BY_HOP) delete copy[name]
  return copy
}

/**
 * The least a Node reverse proxy can do: Node's own http server and client,
 * round-robin over `backends` ("host:port"), connections kept alive, bodies
 * piped both ways. The floor under every Node proxy in the comparison.
 */
export function rawProxy (backends: string[]): http.Server {
  const targets = backends.map(address => {
    const at = address.lastIndexOf(':')
    return { host: address.slice(0, at), port: Number(address.slice(at + 1)) }
  })
  const agent = new http.Agent({ keepAlive: true, maxFreeSockets: 1024 })
  let next = 0
  const server = http.createServer((req, res) => {
    const target = targets[next]
    next = (next + 1) % targets.length
    const upstream = http.request({ ...target, agent, method: req.method, path: req.url, headers: endToEnd(req.headers) }, response => {
      res.writeHead(response.statusCode ?? 502, endToEnd(response.headers))
      response.pipe(res)
    })
    upstream.on('error', () => {
      if (res.headersSent) res.destroy()
      else res.writeHead(502, { 'content-length': 0 }).end()
    })
    res.on('close', () => { if (!res.writableFinished) upstream.destroy() })
    req.pipe(upstream)
  })
  server.on('close', () => agent.destroy())
  return server
}
