// Lifeline live updates: a small client for the SSE endpoints, no framework.
//
//   const live = LifelineLive.connect({
//     streamUrl: "/tutor/events", pollUrl: "/tutor/events.json",
//     lastEventId: 123,                       // the id of the page's snapshot
//     onEvent: (kind, data, id) => { ... },   // one call per event, ids only ever increase
//     onResync: (data) => location.reload(),  // too far behind: reload the snapshot
//     onState: (state) => { ... },            // "connecting" | "live" | "reconnecting" | "polling"
//   });
//   live.lastEventId();  live.close();
//
// EventSource reconnects by itself and sends Last-Event-ID, so the server replays what was
// missed. If the stream fails several times in a row without opening, this polls the JSON
// twin of the endpoint every few seconds instead, and tries the stream again now and then.
(function (global) {
  "use strict";

  var KINDS = [
    "request.created", "request.claimed", "request.released", "request.transferred",
    "request.resolved", "request.cancelled", "request.away", "request.back",
    "request.no_show", "request.expired", "request.rated", "request.meeting",
    "chat.message", "queue.changed", "resync",
  ];

  function withParam(url, name, value) {
    return url + (url.indexOf("?") === -1 ? "?" : "&") + name + "=" + encodeURIComponent(value);
  }

  function connect(options) {
    var lastId = options.lastEventId == null || options.lastEventId === "" ? null
      : Number(options.lastEventId);
    var maxFailures = options.maxFailures || 3;
    var pollInterval = options.pollInterval || 4000;
    var retryStreamEvery = options.retryStreamEvery || 15; // polls between stream attempts
    var kinds = KINDS.concat(options.kinds || []);
    var source = null;
    var timer = null;
    var failures = 0;
    var polls = 0;
    var state = null;
    var closed = false;

    function setState(next) {
      if (state === next) return;
      state = next;
      if (options.onState) options.onState(next);
    }

    function deliver(kind, data, id) {
      if (id != null && !isNaN(id)) {
        if (lastId != null && id <= lastId) return; // already seen (a replay overlap)
        lastId = id;
      }
      if (kind === "resync") {
        if (options.onResync) options.onResync(data);
        return;
      }
      options.onEvent(kind, data, id);
    }

    function onStreamEvent(message) {
      var data;
      try { data = JSON.parse(message.data); } catch (e) { return; }
      deliver(message.type === "message" ? data.kind : message.type, data,
        message.lastEventId ? Number(message.lastEventId) : data.id);
    }

    function openStream() {
      if (closed) return;
      if (!global.EventSource) { startPolling(); return; }
      setState(state === null ? "connecting" : "reconnecting");
      var url = lastId == null ? options.streamUrl
        : withParam(options.streamUrl, "last_event_id", lastId);
      source = new global.EventSource(url, { withCredentials: true });
      source.onopen = function () { failures = 0; stopPolling(); setState("live"); };
      source.onmessage = onStreamEvent;
      kinds.forEach(function (kind) { source.addEventListener(kind, onStreamEvent); });
      source.onerror = function () {
        failures += 1;
        // CLOSED: the server refused (an error page, not a stream); the browser gives up.
        if (source.readyState === global.EventSource.CLOSED || failures >= maxFailures) {
          source.close();
          source = null;
          startPolling();
        } else {
          setState("reconnecting");
        }
      };
    }

    function poll() {
      if (closed) return;
      var url = lastId == null ? options.pollUrl : withParam(options.pollUrl, "after", lastId);
      global.fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
        .then(function (body) {
          (body.events || []).forEach(function (event) { deliver(event.kind, event, event.id); });
          if (body.resync && options.onResync) options.onResync(body);
          if (typeof body.last_event_id === "number" && (lastId == null || body.last_event_id > lastId)) {
            lastId = body.last_event_id;
          }
          schedule(body.more ? 0 : pollInterval);
        })
        .catch(function () { schedule(pollInterval); });
    }

    function schedule(delay) {
      if (closed) return;
      polls += 1;
      if (polls % retryStreamEvery === 0) {
        timer = null;
        failures = 0;
        openStream(); // falls back again by itself if the stream still fails
        return;
      }
      timer = global.setTimeout(poll, delay);
    }

    function startPolling() {
      setState("polling");
      if (timer == null) poll();
    }

    function stopPolling() {
      if (timer != null) { global.clearTimeout(timer); timer = null; }
    }

    openStream();
    return {
      lastEventId: function () { return lastId; },
      state: function () { return state; },
      close: function () {
        closed = true;
        stopPolling();
        if (source) { source.close(); source = null; }
      },
    };
  }

  global.LifelineLive = { connect: connect, KINDS: KINDS };
})(window);
