import { fork } from 'node:child_process'
import type http from 'node:http'
import type { AddressInfo } from 'node:net'
import { fileURLToPath, pathToFileURL } from 'node:url'
import { rawProxy } from './raw-proxy.js'
import type { Children } from './children.js'
import type { FastifyProxyKind } from './fastify-proxies.js'

// Each Node proxy under test runs alone in a child process of its own, so
// the CPU time /proc gives for that pid is the proxy's and nothing else's.

export type NodeProxyKind = 'raw' | FastifyProxyKind

async function listen (kind: NodeProxyKind, servers: string[], logFile: string): Promise<{ port: number, close: () => Promise<void> }> {
  if (kind === 'raw') {
    const server: http.Server = rawProxy(servers)
    await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
    return {
      port: (server.address() as AddressInfo).port,
      close: async () => {
        server.closeAllConnections()
        await new Promise(resolve => server.close(resolve))
      }
    }
  }
  // Fastify is loaded only by the processes that run it
  const { fastifyProxy } = await import('./fastify-proxies.js')
  const app = await fastifyProxy(kind, servers, logFile)
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { port: (app.server.address() as AddressInfo).port, close: async () => await app.close() }
}

async function serve (kind: NodeProxyKind, servers: string[], logFile: string): Promise<void> {
  const { port, close } = await listen(kind, servers, logFile)
  process.on('disconnect', () => {
    close().finally(() => process.exit(0))
  })
  process.send?.({ port })
}

/** Starts one Node proxy over `servers` in a child process; its pid is the proxy's own. */
export async function startNodeProxy (kind: NodeProxyKind, servers: string[], children: Children, logFile = '/dev/null'): Promise<{ port: number, pid: number }> {
  const child = children.track(`node proxy ${kind}`, fork(fileURLToPath(import.meta.url), ['node-proxy', kind, servers.join(','), logFile], {
    stdio: ['ignore', 'ignore', 'pipe', 'ipc']
  }))
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', message => resolve((message as { port: number }).port))
    child.once('exit', code => reject(new Error(`node proxy ${kind} exited with ${code}: ${children.stderrOf(child)}`)))
  })
  return { port, pid: child.pid as number }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href && process.argv[2] === 'node-proxy') {
  serve(process.argv[3] as NodeProxyKind, process.argv[4].split(','), process.argv[5]).catch(error => {
    console.error(error)
    process.exit(1)
  })
}
