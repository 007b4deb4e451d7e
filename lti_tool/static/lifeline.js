/*
 * Lifeline page SDK: an exercise page reports what the learner does, so Lifeline can notice
 * when they are stuck.
 *
 *   <script src="https://lifeline.example.edu/static/lifeline.js"></script>
 *   Lifeline.init({ token });          // the token from Lifeline's learner page (data-sdk-token)
 *   Lifeline.run();                    // ran the program
 *   Lifeline.submit({ correct, score });
 *   Lifeline.error({ type, message });  // type "SyntaxError" (or phase: "compile") is a compile error
 *   Lifeline.hint();
 *   Lifeline.stuck();
 *
 * Events are queued and sent in batches to POST /api/activity/sdk with the bearer token (no
 * cookie), retried with exponential back-off on network errors, 5xx and 429 (honouring
 * Retry-After), and flushed with navigator.sendBeacon when the page is hidden or unloaded.
 * Each event has its own id, so a retried batch is never counted twice.
 */
(function (global) {
  "use strict";

  var script = global.document && global.document.currentScript;
  var defaultEndpoint = "/api/activity/sdk";
  try {
    if (script && script.src) defaultEndpoint = new URL("/api/activity/sdk", script.src).href;
  } catch (e) { /* keep the relative default */ }

  var COMPILE_TYPES = /^(SyntaxError|IndentationError|TabError|CompileError|ParseError)$/;
  var KINDS = ["submit", "run", "compile_error", "runtime_error", "hint", "stuck"];

  var state = {
    token: null,
    endpoint: defaultEndpoint,
    queue: [],
    inFlight: null,
    timer: null,
    attempt: 0,
    stopped: false,
    options: { flushMs: 2000, batchSize: 50, maxQueue: 1000, maxBackoffMs: 60000 },
    onTokenExpired: null,
    sent: 0,
    dropped: 0,
  };

  function uuid() {
    if (global.crypto && typeof global.crypto.randomUUID === "function") return global.crypto.randomUUID();
    var s = "";
    for (var i = 0; i < 32; i++) s += Math.floor(Math.random() * 16).toString(16);
    return s.slice(0, 8) + "-" + s.slice(8, 12) + "-4" + s.slice(13, 16) + "-a" + s.slice(17, 20) + "-" + s.slice(20);
  }

  function log(level, message, detail) {
    if (global.console && global.console[level]) global.console[level]("[Lifeline] " + message, detail || "");
  }

  function schedule(delay) {
    if (state.timer || state.stopped) return;
    state.timer = global.setTimeout(function () {
      state.timer = null;
      flush();
    }, delay);
  }

  function enqueue(kind, fields) {
    if (KINDS.indexOf(kind) < 0) throw new Error("Lifeline: unknown event kind " + kind);
    var event = { id: uuid(), kind: kind, at: new Date().toISOString() };
    for (var key in fields) {
      if (Object.prototype.hasOwnProperty.call(fields, key) && fields[key] !== undefined) event[key] = fields[key];
    }
    state.queue.push(event);
    if (state.queue.length > state.options.maxQueue) {
      state.queue.splice(0, state.queue.length - state.options.maxQueue);
      state.dropped++;
    }
    if (!state.token) return event;  // kept until init gives a token
    if (state.queue.length >= state.options.batchSize) flush();
    else schedule(state.options.flushMs);
    return event;
  }

  function remove(batch) {
    // By id, not by count: a beacon may have taken events while a request was in flight.
    var ids = {};
    batch.forEach(function (event) { ids[event.id] = true; });
    state.queue = state.queue.filter(function (event) { return !ids[event.id]; });
  }

  function backoff(retryAfterSeconds) {
    state.attempt++;
    var delay = Math.min(state.options.maxBackoffMs, 1000 * Math.pow(2, state.attempt - 1));
    delay = delay / 2 + Math.random() * delay / 2;  // jitter: pages do not retry in lockstep
    if (retryAfterSeconds > 0) delay = Math.max(delay, retryAfterSeconds * 1000);
    schedule(delay);
  }

  function flush() {
    if (state.inFlight || state.stopped || !state.token || !state.queue.length) return state.inFlight;
    if (typeof global.fetch !== "function") return null;
    var batch = state.queue.slice(0, state.options.batchSize);
    var body = JSON.stringify({ events: batch, sent_at: new Date().toISOString() });
    state.inFlight = global.fetch(state.endpoint, {
      method: "POST",
      mode: "cors",
      credentials: "omit",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + state.token },
      body: body,
    }).then(function (response) {
      state.inFlight = null;
      if (response.ok) {
        remove(batch);
        state.sent += batch.length;
        state.attempt = 0;
        if (state.queue.length) schedule(0);
        return response;
      }
      if (response.status === 401) {
        state.stopped = true;
        log("warn", "the SDK token was refused (expired?): events are kept until Lifeline.setToken().");
        if (typeof state.onTokenExpired === "function") state.onTokenExpired();
        return response;
      }
      if (response.status === 429 || response.status === 408 || response.status >= 500) {
        backoff(parseInt(response.headers.get("Retry-After") || "0", 10));
        return response;
      }
      // Any other 4xx will not get better by sending the same batch again.
      remove(batch);
      state.dropped += batch.length;
      log("warn", "Lifeline refused a batch of events (" + response.status + ")");
      if (state.queue.length) schedule(0);
      return response;
    }, function (error) {
      state.inFlight = null;
      backoff(0);
      log("info", "could not reach Lifeline, will retry", error);
      return null;
    });
    return state.inFlight;
  }

  function beacon() {
    if (!state.token || !state.queue.length || state.stopped) return false;
    // sendBeacon cannot set headers: the token travels in the body, as text/plain (no preflight).
    var batch = state.queue.slice(0, state.options.batchSize);
    var payload = JSON.stringify({ token: state.token, events: batch, sent_at: new Date().toISOString() });
    var ok = false;
    if (global.navigator && typeof global.navigator.sendBeacon === "function") {
      try {
        ok = global.navigator.sendBeacon(state.endpoint, new Blob([payload], { type: "text/plain" }));
      } catch (e) { ok = false; }
    }
    if (!ok && typeof global.fetch === "function") {
      try {
        global.fetch(state.endpoint, { method: "POST", mode: "cors", credentials: "omit", keepalive: true,
          headers: { "Content-Type": "text/plain" }, body: payload });
        ok = true;
      } catch (e) { ok = false; }
    }
    if (ok) {
      remove(batch);
      state.sent += batch.length;
    }
    return ok;
  }

  function onHide() {
    if (global.document && global.document.visibilityState === "hidden") beacon();
  }

  var Lifeline = {
    init: function (options) {
      options = options || {};
      var token = options.token;
      if (!token && global.document) {
        var holder = global.document.querySelector("[data-sdk-token]");
        token = holder && holder.getAttribute("data-sdk-token");
      }
      if (!token) {
        log("warn", "Lifeline.init needs { token }: events are kept but not sent.");
      }
      state.token = token || null;
      if (options.endpoint) state.endpoint = options.endpoint;
      if (options.onTokenExpired) state.onTokenExpired = options.onTokenExpired;
      ["flushMs", "batchSize", "maxQueue", "maxBackoffMs"].forEach(function (name) {
        if (typeof options[name] === "number" && options[name] >= 0) state.options[name] = options[name];
      });
      state.stopped = false;
      if (state.queue.length) schedule(0);
      return Lifeline;
    },
    setToken: function (token) {
      state.token = token;
      state.stopped = false;
      state.attempt = 0;
      if (state.queue.length) schedule(0);
    },
    run: function () { return enqueue("run", {}); },
    submit: function (result) {
      result = result || {};
      return enqueue("submit", {
        correct: typeof result.correct === "boolean" ? result.correct : null,
        score: typeof result.score === "number" ? result.score : null,
        code_length: typeof result.codeLength === "number" ? result.codeLength : undefined,
      });
    },
    error: function (error) {
      error = error || {};
      var type = error.type ? String(error.type).slice(0, 200) : undefined;
      var compile = error.phase === "compile" || (type && COMPILE_TYPES.test(type));
      return enqueue(compile ? "compile_error" : "runtime_error", {
        error: { type: type, message: error.message ? String(error.message).slice(0, 2000) : undefined },
      });
    },
    hint: function () { return enqueue("hint", {}); },
    stuck: function () { return enqueue("stuck", {}); },
    flush: function () { return flush(); },
    pending: function () { return state.queue.length; },
    stats: function () { return { pending: state.queue.length, sent: state.sent, dropped: state.dropped }; },
  };

  if (global.document && global.addEventListener) {
    global.document.addEventListener("visibilitychange", onHide);
    global.addEventListener("pagehide", beacon);
  }
  global.Lifeline = Lifeline;
})(typeof window !== "undefined" ? window : this);
