// Lifeline page behaviours: live updates (Server-Sent Events, polling fallback), chat,
// heartbeats and alerts. No framework; every element is found by data-testid or id.
(function () {
  "use strict";
  const csrf = () => (document.querySelector("meta[name=csrf-token]") || {}).content || "";

  // Follow an event stream through live.js (reconnects with Last-Event-ID, falls back to
  // polling); the page's <body data-live> says which of the two is in use.
  const OFFER_KINDS = ["offer.created", "offer.accepted", "offer.declined", "offer.escalated",
    "offer.expired"];
  function follow(streamUrl, pollUrl, lastId, onEvent) {
    const live = window.LifelineLive.connect({
      streamUrl, pollUrl, lastEventId: Number(lastId) || 0, kinds: OFFER_KINDS,
      onEvent: (kind, data) => onEvent(kind, data),
      onResync: () => window.location.reload(),
      onState: (state) => {
        if (state === "live") document.body.dataset.live = "stream";
        else if (state === "polling") document.body.dataset.live = "polling";
      },
    });
    return {last: () => live.lastEventId()};
  }

  function post(url, data) {
    const body = new URLSearchParams(data);
    return fetch(url, {method: "POST", body, credentials: "same-origin",
      headers: {"X-CSRF-Token": csrf(), "Accept": "application/json"}});
  }

  function appendMessage(list, message, me) {
    if (!list || list.querySelector('[data-message-id="' + message.id + '"]')) return;
    const item = document.createElement("li");
    item.className = "msg " + (message.author === me ? "mine" : "theirs");
    item.dataset.messageId = message.id;
    item.dataset.testid = "chat-message";
    item.setAttribute("data-testid", "chat-message");
    const who = document.createElement("strong");
    who.textContent = message.name + ": ";
    const text = document.createElement("span");
    text.textContent = message.body;
    item.append(who, text);
    list.append(item);
    list.scrollTop = list.scrollHeight;
  }

  function wireChat(root) {
    const form = root.querySelector("form[data-chat]");
    if (!form) return;
    const list = root.querySelector("[data-testid=chat-log]");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const input = form.querySelector("[name=body]");
      if (!input.value.trim()) return;
      post(form.action, {body: input.value}).then((r) => r.json().then((m) => {
        if (r.ok) { appendMessage(list, m, form.dataset.me); input.value = ""; }
        else { alert(m.error || "The message was not sent."); }
      }));
    });
  }

  function notify(title, body) {
    if (window.Notification && Notification.permission === "granted") {
      try { new Notification(title, {body}); } catch (e) { /* not in this frame */ }
    }
  }

  function askNotifications(button) {
    if (!button) return;
    if (!window.Notification) { button.hidden = true; return; }
    button.addEventListener("click", () => Notification.requestPermission().then((p) => {
      button.textContent = p === "granted" ? "Browser alerts on" : "Alerts blocked by the browser";
    }));
  }

  // -- learner status page --------------------------------------------------------------
  function learnerStatus(root) {
    const state = JSON.parse(root.dataset.state);
    let alertedTwo = false;
    const banner = root.querySelector("[data-testid=alert-banner]");
    function show(text) { if (banner) { banner.textContent = text; banner.hidden = false; } }
    function refresh() {
      fetch(root.dataset.statusUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then((r) => r.json()).then((s) => {
          if (s.status !== state.status) { window.location.reload(); return; }
          const set = (id, v) => { const el = root.querySelector("[data-testid=" + id + "]"); if (el) el.textContent = v; };
          if (s.estimate) {
            set("queue-position", s.position);
            set("queue-ahead", s.ahead);
            set("wait-estimate", s.estimate.text);
            if (s.ahead <= 2 && s.ahead > 0 && !alertedTwo) {
              alertedTwo = true;
              show("Almost your turn: " + s.ahead + " ahead of you. Stay close!");
              notify("Lifeline: almost your turn", s.ahead + " ahead of you");
            }
          }
        }).catch(() => {});
    }
    follow(root.dataset.streamUrl, root.dataset.pollUrl, root.dataset.lastEventId, (kind, data) => {
      if (kind === "chat.message" && data.data) {
        appendMessage(root.querySelector("[data-testid=chat-log]"), {
          id: data.data.message_id, author: data.data.author, name: data.data.name, body: data.data.body}, "learner");
        if (data.data.author === "tutor") notify("Lifeline: new message", data.data.body);
        return;
      }
      if (kind === "request.claimed") notify("Lifeline: it's your turn", "A tutor is ready for you.");
      if (kind === "request.meeting") { window.location.reload(); return; }
      refresh();
    });
    wireChat(root);
    askNotifications(root.querySelector("[data-testid=enable-notifications]"));
    if (state.status === "queued" && state.ahead !== undefined && state.ahead <= 2 && state.ahead > 0) {
      alertedTwo = true;
      show("Almost your turn: " + state.ahead + " ahead of you. Stay close!");
    }
    if (state.status === "claimed") show("It's your turn: your tutor is ready.");
  }

  // -- tutor dashboard --------------------------------------------------------------------
  function tutorDashboard(root) {
    const list = root.querySelector("[data-testid=queue]");
    let timer = null;
    function refresh() {
      clearTimeout(timer);
      timer = setTimeout(() => {
        fetch(root.dataset.fragmentUrl, {credentials: "same-origin"})
          .then((r) => (r.ok ? r.text() : null))
          .then((html) => { if (html !== null) list.innerHTML = html; });
      }, 50);
    }
    follow(root.dataset.streamUrl, root.dataset.pollUrl, root.dataset.lastEventId, (kind, data) => {
      if (kind === "request.created") notify("Lifeline: a learner needs help", (data.data && data.data.question) || "");
      if (kind !== "chat.message") refresh();
    });
    const beat = () => post(root.dataset.heartbeatUrl, {}).catch(() => {});
    setInterval(beat, 20000);
    askNotifications(root.querySelector("[data-testid=enable-notifications]"));
  }

  function tutorSession(root) {
    follow(root.dataset.streamUrl, root.dataset.pollUrl, root.dataset.lastEventId, (kind, data) => {
      if (kind === "chat.message" && data.data && data.request_id === Number(root.dataset.requestId)) {
        appendMessage(root.querySelector("[data-testid=chat-log]"), {
          id: data.data.message_id, author: data.data.author, name: data.data.name, body: data.data.body}, "tutor");
      } else if (data && data.request_id === Number(root.dataset.requestId) && kind !== "chat.message") {
        window.location.reload();
      }
    });
    wireChat(root);
    setInterval(() => post(root.dataset.heartbeatUrl, {}).catch(() => {}), 20000);
  }

  function instructorQueue(root) {
    follow(root.dataset.streamUrl, root.dataset.pollUrl, root.dataset.lastEventId, () => {
      clearTimeout(root._t);
      root._t = setTimeout(() => window.location.reload(), 300);
    });
  }

  // -- learner landing: live detection's offer ---------------------------------------------
  function learnerOffers(box) {
    const $ = (id) => box.querySelector("[data-testid=" + id + "]");
    const accept = $("offer-accept"), decline = $("offer-decline"), consent = $("offer-consent");
    const error = $("offer-error");
    let current = null;
    function render(offers) {
      current = (offers || [])[0] || null;
      if (!current) { box.hidden = true; return; }
      $("offer-headline").textContent = current.headline;
      $("offer-reason").textContent = current.reason ? " (" + current.reason + ")" : "";
      $("offer-consent-label").hidden = !current.can_consent;
      consent.checked = !!current.consent;
      error.hidden = true;
      accept.disabled = false;
      box.hidden = false;
    }
    function load() {
      return fetch(box.dataset.offersUrl, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then((r) => (r.ok ? r.json() : null))
        .then((body) => { if (body) render(body.offers); return body; })
        .catch(() => null);
    }
    function fail(body) {
      error.textContent = (body && body.error) || "That did not work. Try again.";
      error.hidden = false;
      accept.disabled = false;
    }
    accept.addEventListener("click", () => {
      if (!current) return;
      accept.disabled = true;
      post(current.accept_url, {}).then((r) => r.json().then((body) => {
        if (r.ok && body.url) window.location.href = body.url; else fail(body);
      })).catch(() => fail(null));
    });
    decline.addEventListener("click", () => {
      if (!current) return;
      post(current.decline_url, {}).then(() => load());
      box.hidden = true;
    });
    consent.addEventListener("change", () => {
      if (current && consent.checked) post(current.consent_url, {}).catch(() => {});
    });
    load().then((body) => {
      follow(box.dataset.streamUrl, box.dataset.pollUrl, body ? body.last_event_id : 0, () => load());
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const offerBox = document.querySelector("[data-offers-url]");
    if (offerBox) learnerOffers(offerBox);
    const page = document.querySelector("[data-page]");
    if (!page) return;
    ({"learner-status": learnerStatus, "tutor-dashboard": tutorDashboard,
      "tutor-session": tutorSession, "instructor-queue": instructorQueue}[page.dataset.page] || (() => {}))(page);
  });
})();
