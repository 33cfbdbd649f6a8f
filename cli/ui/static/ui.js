// The live view of clustral ui: one event stream per cluster shown (the
// agent's snapshot and changes, filtered by the user's access), rendered
// without a reload; pod logs followed in a second stream. Every value
// from the cluster goes into the page as text, never as markup.
'use strict';
(() => {
  const main = document.getElementById('main');
  const crumbs = document.getElementById('crumbs');
  const statusEl = document.getElementById('status');

  let clusters = [];
  let stream = null, streamCluster = null;
  let objects = new Map(); // kind/namespace/name → object
  let pending = null;      // the snapshot being received
  let synced = false;
  let failure = '';
  let logSource = null, logFor = '';
  let scheduled = false;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }
  const link = (href, text) => el('a', { href, 'data-nav': '' }, text);
  const enc = encodeURIComponent;

  function route() {
    const p = location.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    return {
      cluster: p[0],
      ns: p[1] === 'ns' ? p[2] : undefined,
      pod: p[1] === 'ns' && p[3] === 'pods' ? p[4] : undefined,
    };
  }

  function key(e) { return e.kind + '/' + (e.namespace || '') + '/' + e.name; }

  function connect(cluster) {
    if (streamCluster === cluster) return;
    if (stream) stream.close();
    objects = new Map(); pending = null; synced = false; failure = '';
    streamCluster = cluster;
    if (!cluster) { stream = null; return; }
    stream = new EventSource('/api/live/' + enc(cluster));
    stream.addEventListener('live', (m) => apply(JSON.parse(m.data)));
    stream.addEventListener('failure', (m) => {
      const f = JSON.parse(m.data);
      failure = f.message || 'the live stream failed';
      if (f.status === 401 || f.status === 403 || f.status === 404) {
        stream.close(); // refused: retrying would be refused again
      }
      schedule();
    });
    stream.onopen = () => { failure = ''; schedule(); };
    stream.onerror = () => schedule();
  }

  function apply(e) {
    switch (e.type) {
      case 'snapshot': pending = new Map(); break;
      case 'synced':
        if (pending) { objects = pending; pending = null; }
        synced = true; failure = '';
        break;
      case 'upsert': (pending || objects).set(key(e), e.object); break;
      case 'delete': objects.delete(key(e)); break;
    }
    schedule();
  }

  function schedule() {
    if (scheduled) return;
    scheduled = true;
    requestAnimationFrame(() => { scheduled = false; render(); });
  }

  function list(kind, ns) {
    const out = [];
    for (const [k, o] of objects) {
      if (!k.startsWith(kind + '/')) continue;
      if (ns !== undefined && (o.metadata.namespace || '') !== ns) continue;
      out.push(o);
    }
    return out.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  }

  function age(ts) {
    if (!ts) return '';
    let s = Math.max(0, Math.floor((Date.now() - Date.parse(ts)) / 1000));
    if (s < 120) return s + 's';
    let m = Math.floor(s / 60);
    if (m < 120) return m + 'm';
    let h = Math.floor(m / 60);
    if (h < 48) return h + 'h';
    return Math.floor(h / 24) + 'd';
  }

  // podStatus is the status column of kubectl get pods.
  function podStatus(p) {
    if (p.metadata.deletionTimestamp) return 'Terminating';
    const st = p.status || {};
    let reason = st.reason || st.phase || 'Unknown';
    for (const cs of st.containerStatuses || []) {
      if (cs.state && cs.state.waiting && cs.state.waiting.reason) reason = cs.state.waiting.reason;
      else if (cs.state && cs.state.terminated && cs.state.terminated.reason) reason = cs.state.terminated.reason;
    }
    return reason;
  }
  function statusClass(s) {
    if (s === 'Running' || s === 'Succeeded' || s === 'Completed') return 'pill good';
    if (s === 'Pending' || s === 'ContainerCreating' || s === 'Terminating') return 'pill warn';
    return 'pill bad';
  }
  const restarts = (p) => ((p.status || {}).containerStatuses || []).reduce((n, c) => n + (c.restartCount || 0), 0);
  function readyPods(p) {
    const cs = (p.status || {}).containerStatuses || [];
    return cs.filter((c) => c.ready).length + '/' + ((p.spec || {}).containers || []).length;
  }

  function table(caption, head, rows) {
    if (rows.length === 0) return el('p', { class: 'empty' }, 'No ' + caption.toLowerCase() + ' you may see.');
    return el('div', { class: 'table-wrap' }, el('table', {},
      el('caption', { class: 'sr' }, caption),
      el('thead', {}, el('tr', {}, head.map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, rows.map((r) => el('tr', {}, r.map((c) => el('td', c && c.num ? { class: 'num' } : {}, c && c.num !== undefined ? String(c.num) : c)))))));
  }
  const section = (title, ...body) => el('section', { class: 'card' }, el('h2', {}, title), ...body);

  function renderClusters() {
    setCrumbs([]);
    return [el('h1', {}, 'Clusters'),
      clusters.length === 0
        ? el('p', { class: 'empty' }, 'clustral up reaches no cluster. Ask an admin for a role, then run: clustral up')
        : el('ul', { class: 'grid' }, clusters.map((c) => el('li', {}, link('/' + enc(c), c))))];
  }

  function namespacesOf() {
    const names = new Set(list('namespaces').map((n) => n.metadata.name));
    for (const o of objects.values()) if (o.metadata.namespace) names.add(o.metadata.namespace);
    return [...names].sort();
  }

  function renderCluster(c) {
    setCrumbs([[c, '/' + enc(c)]]);
    const nss = namespacesOf();
    const out = [el('h1', {}, c)];
    out.push(section('Namespaces', nss.length === 0 ? el('p', { class: 'empty' }, 'No namespace you may see.')
      : el('ul', { class: 'grid' }, nss.map((ns) => el('li', {}, link('/' + enc(c) + '/ns/' + enc(ns), ns),
        el('span', { class: 'muted' }, ' ' + list('pods', ns).length + ' pods'))))));
    const nodes = list('nodes');
    if (nodes.length > 0) {
      out.push(section('Nodes', table('Nodes', ['Name', 'Ready', 'Age'], nodes.map((n) => {
        const ready = ((n.status || {}).conditions || []).find((x) => x.type === 'Ready');
        return [n.metadata.name, ready ? ready.status : 'Unknown', age(n.metadata.creationTimestamp)];
      }))));
    }
    return out;
  }

  const workloadKinds = [['deployments.apps', 'Deployment'], ['statefulsets.apps', 'StatefulSet'], ['daemonsets.apps', 'DaemonSet'],
    ['replicasets.apps', 'ReplicaSet'], ['jobs.batch', 'Job'], ['cronjobs.batch', 'CronJob']];

  function workloadReady(kind, o) {
    const st = o.status || {}, sp = o.spec || {};
    switch (kind) {
      case 'DaemonSet': return (st.numberReady || 0) + '/' + (st.desiredNumberScheduled || 0);
      case 'Job': return (st.succeeded || 0) + '/' + (sp.completions || 1);
      case 'CronJob': return (st.active || []).length + ' active';
      default: return (st.readyReplicas || 0) + '/' + (sp.replicas === undefined ? 1 : sp.replicas);
    }
  }

  function renderNamespace(c, ns) {
    setCrumbs([[c, '/' + enc(c)], [ns, '/' + enc(c) + '/ns/' + enc(ns)]]);
    const base = '/' + enc(c) + '/ns/' + enc(ns);
    const workloads = [];
    for (const [kind, label] of workloadKinds) {
      for (const o of list(kind, ns)) workloads.push([label, o.metadata.name, workloadReady(label, o), age(o.metadata.creationTimestamp)]);
    }
    const pods = list('pods', ns).map((p) => {
      const st = podStatus(p);
      return [link(base + '/pods/' + enc(p.metadata.name), p.metadata.name), readyPods(p), el('span', { class: statusClass(st) }, st),
        { num: restarts(p) }, age(p.metadata.creationTimestamp), (p.spec || {}).nodeName || ''];
    });
    const services = list('services', ns).map((s) => [s.metadata.name, (s.spec || {}).type || '', (s.spec || {}).clusterIP || '',
      ((s.spec || {}).ports || []).map((p) => p.port + '/' + (p.protocol || 'TCP')).join(', '), age(s.metadata.creationTimestamp)]);
    return [el('h1', {}, ns),
      section('Workloads', table('Workloads', ['Kind', 'Name', 'Ready', 'Age'], workloads)),
      section('Pods', table('Pods', ['Name', 'Ready', 'Status', 'Restarts', 'Age', 'Node'], pods)),
      section('Services', table('Services', ['Name', 'Type', 'Cluster IP', 'Ports', 'Age'], services)),
      section('Events', eventsTable(list('events', ns)))];
  }

  function eventTime(e) { return e.lastTimestamp || e.eventTime || e.metadata.creationTimestamp; }
  function eventsTable(evs, filter) {
    const rows = evs.filter(filter || (() => true))
      .sort((a, b) => Date.parse(eventTime(b)) - Date.parse(eventTime(a))).slice(0, 50)
      .map((e) => [e.type || '', e.reason || '', ((e.involvedObject || {}).kind || '') + '/' + ((e.involvedObject || {}).name || ''),
        e.message || '', age(eventTime(e))]);
    return table('Events', ['Type', 'Reason', 'Object', 'Message', 'Age'], rows);
  }

  function renderPod(c, ns, name) {
    const base = '/' + enc(c) + '/ns/' + enc(ns);
    setCrumbs([[c, '/' + enc(c)], [ns, base], [name, base + '/pods/' + enc(name)]]);
    const p = objects.get('pods/' + ns + '/' + name);
    if (!p) {
      return [el('h1', {}, name), el('p', { class: 'empty' }, synced ? 'No such pod, or you may not see it. It may have been deleted.' : 'Loading…')];
    }
    const st = podStatus(p);
    const cs = (p.status || {}).containerStatuses || [];
    return [el('h1', {}, name),
      section('Status', el('dl', { class: 'limits' },
        el('dt', {}, 'Status'), el('dd', {}, el('span', { class: statusClass(st) }, st)),
        el('dt', {}, 'Ready'), el('dd', {}, readyPods(p)),
        el('dt', {}, 'Restarts'), el('dd', {}, String(restarts(p))),
        el('dt', {}, 'Age'), el('dd', {}, age(p.metadata.creationTimestamp)),
        el('dt', {}, 'Node'), el('dd', {}, (p.spec || {}).nodeName || '—'),
        el('dt', {}, 'Pod IP'), el('dd', {}, (p.status || {}).podIP || '—'))),
      section('Containers', table('Containers', ['Name', 'Image', 'Ready', 'Restarts'],
        ((p.spec || {}).containers || []).map((k) => {
          const s = cs.find((x) => x.name === k.name) || {};
          return [k.name, k.image || '', s.ready ? 'yes' : 'no', { num: s.restartCount || 0 }];
        }))),
      section('Events', eventsTable(list('events', ns), (e) => (e.involvedObject || {}).name === name))];
  }

  // The log pane lives outside the re-rendered view, so following a log
  // survives every change to the cluster.
  let logPane = null;
  function followLogs(r) {
    const want = r.pod ? r.cluster + '/' + r.ns + '/' + r.pod : '';
    if (want === logFor) return;
    if (logSource) logSource.close();
    logSource = null; logFor = want; logPane = null;
    if (!want) return;
    const pre = el('pre', { class: 'logs', tabindex: '0', 'aria-label': 'Log of ' + r.pod, 'aria-live': 'off' });
    const note = el('p', { class: 'muted' }, 'Following the log…');
    logPane = section('Log', note, pre);
    logSource = new EventSource('/api/logs/' + enc(r.cluster) + '/' + enc(r.ns) + '/' + enc(r.pod));
    logSource.addEventListener('line', (m) => {
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.append(JSON.parse(m.data) + '\n');
      while (pre.childNodes.length > 5000) pre.removeChild(pre.firstChild);
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    });
    logSource.addEventListener('failure', (m) => { note.textContent = JSON.parse(m.data).message; logSource.close(); });
    logSource.addEventListener('end', () => { note.textContent = 'The log ended.'; logSource.close(); });
  }

  function setCrumbs(items) {
    crumbs.replaceChildren(...items.map(([text, href], i) => {
      const a = link(href, text);
      if (i === items.length - 1) a.setAttribute('aria-current', 'page');
      return a;
    }));
  }

  function render() {
    const r = route();
    connect(r.cluster);
    followLogs(r);
    let view;
    if (!r.cluster) view = renderClusters();
    else if (!clusters.includes(r.cluster)) view = [el('h1', {}, r.cluster), el('p', { class: 'error' }, 'clustral up does not reach a cluster named ' + r.cluster + '.')];
    else if (r.pod) view = renderPod(r.cluster, r.ns, r.pod);
    else if (r.ns) view = renderNamespace(r.cluster, r.ns);
    else view = renderCluster(r.cluster);
    if (failure) view.splice(1, 0, el('p', { class: 'error', role: 'alert' }, failure));
    else if (r.cluster && !synced) view.splice(1, 0, el('p', { class: 'muted' }, 'Loading…'));
    main.replaceChildren(...view, ...(logPane ? [logPane] : []));
    statusEl.textContent = !r.cluster ? '' : failure ? 'disconnected' : synced ? 'live' : 'connecting';
  }

  document.addEventListener('click', (ev) => {
    const a = ev.target.closest('a[data-nav]');
    if (!a || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    history.pushState(null, '', a.getAttribute('href'));
    render();
    main.focus({ preventScroll: true });
  });
  window.addEventListener('popstate', render);
  setInterval(schedule, 5000); // ages move on

  fetch('/api/clusters', { credentials: 'same-origin' })
    .then((r) => r.json())
    .then((cs) => { clusters = cs; render(); })
    .catch(() => { main.replaceChildren(el('p', { class: 'error' }, 'clustral ui stopped. Run it again.')); });
})();
