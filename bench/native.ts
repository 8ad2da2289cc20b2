import { spawnSync } from 'node:child_process'
import { chmodSync, chownSync, existsSync, readFileSync } from 'node:fs'
import { mkdir, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { freePort, which } from '../lib/dev/supervisord-daemon.js'
import { listening, type Children } from './children.js'

// HAProxy and nginx as the peers' reference, and nginx as the fastest
// backend: each a child process of ours in the foreground, one thread or
// worker, its config in a directory of its own, listening on 127.0.0.1 only.

export type NativeName = 'haproxy' | 'nginx'

export interface Native { name: NativeName, path: string, version: string }

/** The installed binary and its version, or why there is none. */
export function findNative (name: NativeName): Native | string {
  const found = which(name) ?? ['/usr/sbin', '/usr/local/sbin'].map(dir => path.join(dir, name)).find(file => existsSync(file))
  if (found === undefined) return `${name} is not installed (not on the PATH nor in /usr/sbin)`
  // nginx -v prints to stderr, haproxy -v to stdout
  const { stdout, stderr, error } = spawnSync(found, ['-v'], { encoding: 'utf8', timeout: 5000 })
  if (error !== undefined) return `${found} -v failed: ${error.message}`
  return { name, path: found, version: /\d+\.\d+\.\d+/.exec(stdout + stderr)?.[0] ?? '' }
}

/** When we run as root, the uid and gid of `nobody`, so the servers run unprivileged. */
function unprivileged (): { uid: number, gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined
  const line = readFileSync('/etc/passwd', 'utf8').split('\n').find(entry => entry.startsWith('nobody:'))
  const [, , uid, gid] = line?.split(':') ?? []
  return uid === undefined ? { uid: 65534, gid: 65534 } : { uid: Number(uid), gid: Number(gid) }
}

async function ownDir (dir: string): Promise<{ uid: number, gid: number } | undefined> {
  await mkdir(dir, { recursive: true })
  const user = unprivileged()
  if (user !== undefined) {
    chownSync(dir, user.uid, user.gid)
    // mkdtemp made the parent 0700: nobody must be able to pass through it
    chmodSync(path.dirname(dir), 0o711)
  }
  return user
}

const address = (server: string): string => server.includes(':') ? server : `127.0.0.1:${server}`

async function startNginx (native: Native, dir: string, name: string, http: string, ports: number[], children: Children): Promise<number> {
  const user = await ownDir(dir)
  const config = `daemon off;
master_process off;
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  keepalive_timeout 75s;
  keepalive_requests 1000000;
${http}
}
`
  await writeFile(path.join(dir, 'nginx.conf'), config)
  const child = children.spawn(name, native.path, ['-p', dir, '-e', `${dir}/error.log`, '-c', `${dir}/nginx.conf`], { ...user })
  try {
    for (const port of ports) await listening(port, child)
  } catch (error) {
    const log = existsSync(`${dir}/error.log`) ? readFileSync(`${dir}/error.log`, 'utf8') : ''
    throw new Error(`${name}: ${(error as Error).message} ${children.stderrOf(child)} ${log}`.trim())
  }
  return child.pid as number
}

/** nginx answering 200 "ok" on `count` ports, from one process: the backends. */
export async function startNginxBackend (native: Native, dir: string, count: number, children: Children): Promise<{ ports: number[], pid: number }> {
  const ports: number[] = []
  for (let i = 0; i < count; i++) ports.push(await freePort())
  const http = `  server {
${ports.map(port => `    listen 127.0.0.1:${port};`).join('\n')}
    default_type text/plain;
    location / { return 200 "ok"; }
  }`
  return { ports, pid: await startNginx(native, dir, 'nginx backend', http, ports, children) }
}

/** nginx as a round-robin proxy over `servers`, connections to them kept alive. */
export async function startNginxProxy (native: Native, dir: string, servers: string[], children: Children): Promise<{ port: number, pid: number }> {
  const port = await freePort()
  const http = `  upstream peers {
${servers.map(server => `    server ${address(server)};`).join('\n')}
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${port};
    location / {
      proxy_pass http://peers;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }`
  return { port, pid: await startNginx(native, dir, 'nginx proxy', http, [port], children) }
}

/** HAProxy, one thread, round-robin over `servers`, idle server connections reused by any client. */
export async function startHaproxy (native: Native, dir: string, servers: string[], children: Children): Promise<{ port: number, pid: number }> {
  const user = await ownDir(dir)
  const port = await freePort()
  const config = `global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend bench
    bind 127.0.0.1:${port}
    default_backend peers

backend peers
    balance roundrobin
${servers.map((server, i) => `    server s${i} ${address(server)}`).join('\n')}
`
  await writeFile(path.join(dir, 'haproxy.cfg'), config)
  const child = children.spawn('haproxy', native.path, ['-db', '-f', path.join(dir, 'haproxy.cfg')], { ...user })
  try {
    await listening(port, child)
  } catch (error) {
    throw new Error(`haproxy: ${(error as Error).message} ${children.stderrOf(child)}`.trim())
  }
  return { port, pid: child.pid as number }
}
