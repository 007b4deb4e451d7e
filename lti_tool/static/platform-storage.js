/*
 * LTI Platform Storage, the tool's side (the server side and the reasons are in
 * lti_tool/lti/platform_storage.py).
 *
 * When the browser refuses Lifeline's cookies inside the LMS's iframe, the login's state and
 * nonce are kept by the LMS's page instead, over postMessage (1EdTech "LTI Client Side
 * postMessages" and "Platform Storage"):
 *
 *   login page   lti.capabilities -> lti.put_data lti_state_<state>, lti_nonce_<nonce> -> platform
 *   launch page  lti.capabilities -> lti.get_data both keys -> values checked -> post the proof
 *
 * Every request carries a fresh message_id, and only the answer with that message_id and the
 * subject "<subject>.response" counts. Data goes only to the platform's storage origin (that
 * of its OIDC authorization endpoint, given by the server), never to "*", and answers from any
 * other origin are ignored. lti.capabilities carries no data, so it may go to "*": the LMS
 * page embedding us may live on another origin than its storage frame (Canvas does this).
 * A request unanswered within data-timeout-ms fails: the login then goes on with the cookie
 * alone, and the launch page offers to continue in a new window.
 */
(function () {
  "use strict";

  function randomId() {
    var bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  /* The window that embeds Lifeline (an iframe's parent) or opened it (a popup's opener). */
  function hostWindow() {
    if (window.opener && window.opener !== window) return window.opener;
    if (window.parent && window.parent !== window) return window.parent;
    return null;
  }

  /* The storage frame: a named frame of the host, or the host itself for "_parent". */
  function frameOf(host, name) {
    if (!name || name === "_parent") return host;
    try {
      var frame = host.frames[name];
      if (frame) return frame;
    } catch (e) { /* cross-origin named access refused: use the host, as the reference does */ }
    return host;
  }

  function describe(error) {
    if (error && typeof error === "object") return String(error.code || "error") + (error.message ? ": " + error.message : "");
    return String(error);
  }

  /* Post ``message`` to ``target`` and resolve with its answer, or reject on an error answer
     or after ``timeoutMs``. ``accept(event)`` says whether the answer may come from there. */
  function send(target, targetOrigin, message, accept, timeoutMs) {
    return new Promise(function (resolve, reject) {
      var id = "lifeline-" + randomId();
      var payload = {};
      Object.keys(message).forEach(function (k) { payload[k] = message[k]; });
      payload.message_id = id;
      var timer = null;
      function done() {
        window.removeEventListener("message", onMessage);
        if (timer !== null) window.clearTimeout(timer);
      }
      function onMessage(event) {
        var data = event.data;
        if (typeof data === "string") {
          try { data = JSON.parse(data); } catch (e) { return; }
        }
        if (!data || typeof data !== "object" || data.message_id !== id) return;
        if (data.subject !== message.subject + ".response" || !accept(event)) return;
        done();
        if (data.error) reject(new Error(describe(data.error)));
        else resolve(data);
      }
      window.addEventListener("message", onMessage);
      timer = window.setTimeout(function () {
        done();
        reject(new Error("no answer to " + message.subject + " within " + timeoutMs + " ms"));
      }, timeoutMs);
      try {
        target.postMessage(payload, targetOrigin);
      } catch (e) {
        done();
        reject(e);
      }
    });
  }

  function Storage(root) {
    var config = root.dataset;
    this.origin = config.platformOrigin;
    this.frameName = config.storageTarget;
    this.timeout = parseInt(config.timeoutMs, 10) || 2000;
    this.host = hostWindow();
    this.frames = {};
  }

  /* Ask the host what it supports, once; remember which frame answers ``subject``. */
  Storage.prototype.frameFor = function (subject) {
    var self = this;
    if (!self.host) return Promise.reject(new Error("Lifeline is not inside a course page"));
    if (!self.capabilities) {
      self.capabilities = send(self.host, "*", { subject: "lti.capabilities" }, function (event) {
        return event.source === self.host;
      }, self.timeout);
    }
    return self.capabilities.then(function (answer) {
      var list = answer.supported_messages;
      if (!Array.isArray(list)) throw new Error("the course page lists no supported messages");
      for (var i = 0; i < list.length; i++) {
        var entry = list[i];
        if (entry && entry.subject === subject) {
          return frameOf(self.host, typeof entry.frame === "string" ? entry.frame : self.frameName);
        }
      }
      throw new Error("the course page does not offer " + subject);
    });
  };

  Storage.prototype.request = function (message) {
    var self = this;
    return self.frameFor(message.subject).then(function (frame) {
      return send(frame, self.origin, message, function (event) {
        return event.origin === self.origin;
      }, self.timeout);
    });
  };

  Storage.prototype.put = function (key, value) {
    return this.request({ subject: "lti.put_data", key: key, value: value }).then(function (answer) {
      if (answer.key !== undefined && answer.key !== key) throw new Error("the course page stored another key");
    });
  };

  Storage.prototype.get = function (key) {
    return this.request({ subject: "lti.get_data", key: key }).then(function (answer) {
      if (answer.key !== undefined && answer.key !== key) throw new Error("the course page answered for another key");
      return answer.value;
    });
  };

  function testid(root, name) {
    return root.querySelector("[data-testid=" + name + "]");
  }

  /* Login: keep state and nonce in platform storage, then go on to the LMS's sign-in. */
  function login(root) {
    var config = root.dataset;
    var storage = new Storage(root);
    function proceed() { window.location.replace(config.next); }
    storage.put(config.stateKey, config.state)
      .then(function () { return storage.put(config.nonceKey, config.nonce); })
      .then(proceed, function (error) {
        var note = testid(root, "storage-fallback");
        note.textContent = "Your course page did not keep Lifeline's sign-in data (" + error.message +
          "). Continuing with a cookie instead.";
        note.hidden = false;
        window.setTimeout(proceed, 800);
      });
  }

  /* Launch without the state cookie: read both values back, check them, post the proof. */
  function launch(root) {
    var config = root.dataset;
    var storage = new Storage(root);
    var form = testid(root, "storage-proof");
    function expect(key, wanted) {
      return storage.get(key).then(function (value) {
        if (value !== wanted) throw new Error("the course page does not hold this sign-in");
        return value;
      });
    }
    expect(config.stateKey, config.state)
      .then(function (state) {
        form.elements.lti_storage_state.value = state;
        return expect(config.nonceKey, config.nonce);
      })
      .then(function (nonce) {
        form.elements.lti_storage_nonce.value = nonce;
        testid(root, "storage-status").textContent = "Signed in. Opening Lifeline…";
        form.submit();
      }, function (error) {
        testid(root, "storage-status").textContent = "Your course page could not confirm your sign-in (" + error.message + ").";
        testid(root, "storage-failed").hidden = false;
      });
  }

  function init() {
    Array.prototype.forEach.call(document.querySelectorAll("[data-testid=new-window-form]"), function (form) {
      form.addEventListener("submit", function () {
        var opened = form.parentNode.querySelector("[data-testid=new-window-opened]");
        if (opened) opened.hidden = false;
      });
    });
    var root = document.querySelector("[data-storage-mode]");
    if (!root) return;
    if (root.dataset.storageMode === "login") login(root);
    else if (root.dataset.storageMode === "launch") launch(root);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
