import t from 'tap'
import { VirtualHosts, hostOf } from '../lib/virtual-hosts.js'

t.test('hostOf is nginx\'s $host: lower case, no port, no trailing dot; IPv6 literals keep their brackets', async t => {
  t.equal(hostOf('Shop.Example.COM:8080'), 'shop.example.com')
  t.equal(hostOf('example.com.'), 'example.com')
  t.equal(hostOf('[::1]:3000'), '[::1]')
  t.equal(hostOf('[::1'), '[::1', 'an unclosed bracket is kept as it is')
  t.equal(hostOf(undefined), '')
  t.equal(hostOf(''), '')
})

t.test('server names: duplicates and bad names fail naming the name; a missing Host matches only the default', async t => {
  t.throws(() => new VirtualHosts({ 'a.example.com': 1, 'A.example.com': 2 }, 'proxy'), /server name "A.example.com" is given twice/)
  t.throws(() => new VirtualHosts({ '.example.com': 1, '*.example.com': 2 }, 'proxy'), /"\*.example.com" is given twice/, '.example.com already is *.example.com')
  t.throws(() => new VirtualHosts({ 'exa mple.com': 1 }, 'proxy'), /must be a host name/)
  const table = new VirtualHosts({ 'www.example.*': 'www', 'www.example.co.*': 'co' }, 'proxy')
  t.equal(table.match('www.example.co.uk'), 'co', 'the longest trailing wildcard wins')
  t.equal(table.match('www.example.com'), 'www')
  t.equal(table.match(undefined), undefined)
  t.equal(table.match('www'), undefined)
})
