// The alarm queue's live side (a file: the console's content security policy forbids inline script).
// htmx's SSE extension inserts each `alarm` row at the top of the queue; here: the sound and the
// browser notification for it, a reload of the queue on `missed` and after an action, the status line.
(function () {
  "use strict";

  function reloadQueue() {
    if (!document.getElementById("alarm-view")) { window.location.reload(); return; }  // the alarm's own page
    // the same page, only the queue part (filters kept: the URL carries them)
    htmx.ajax("GET", window.location.href, { target: "#alarm-view", select: "#alarm-view", swap: "outerHTML" });
  }

  function live(text) {
    const state = document.getElementById("live-state");
    if (state) { state.textContent = text; }
  }

  function announce(row) {
    const sound = document.getElementById("alarm-sound");
    if (sound) {
      sound.currentTime = 0;
      const played = sound.play();
      if (played && played.catch) { played.catch(function () { live("提示音被浏览器阻止：请点击“开启桌面通知与提示音”"); }); }
    }
    if ("Notification" in window && Notification.permission === "granted") {
      // textContent/dataset: the alarm's fields are text here, never markup
      new Notification("新告警", { body: row ? row.dataset.summary : "", tag: row ? row.dataset.event : undefined });
    }
    const open = document.getElementById("open-count");
    if (open) { open.textContent = String(Number(open.textContent || "0") + 1); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    const button = document.getElementById("enable-notifications");
    if (button) {
      button.addEventListener("click", function () {
        // permission is asked on a user's click (browsers refuse it otherwise); the click also unlocks sound
        if ("Notification" in window && Notification.permission === "default") {
          Notification.requestPermission().then(function (p) { live(p === "granted" ? "桌面通知已开启" : "桌面通知未获允许"); });
        }
      });
    }
  });

  document.body.addEventListener("htmx:sseOpen", function (evt) {
    live("实时连接正常");
    const source = evt.detail.source;
    if (source.__alarmsWired) { return; }
    source.__alarmsWired = true;
    source.addEventListener("missed", function () { live("有告警未能实时显示，已重新加载"); reloadQueue(); });
    source.addEventListener("ended", function () { source.close(); window.location.reload(); });
  });
  document.body.addEventListener("htmx:sseError", function () { live("实时连接中断，正在重连…"); });

  document.body.addEventListener("htmx:sseBeforeMessage", function (evt) {
    if (evt.detail.type !== "alarm") { return; }
    // a new alarm is "new": with a state filter that excludes it, it is announced but not listed
    const view = document.getElementById("alarm-view");
    const state = view ? view.dataset.state : "";
    if (state && state !== "new") { evt.preventDefault(); announce(null); }
  });
  document.body.addEventListener("htmx:sseMessage", function (evt) {
    if (evt.detail.type !== "alarm") { return; }
    const queue = document.getElementById("queue");
    announce(queue ? queue.querySelector("tr") : null);
  });

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    const form = evt.detail.elt && evt.detail.elt.closest ? evt.detail.elt.closest("form.alarm-action") : null;
    if (!form) { return; }
    if (evt.detail.successful) { reloadQueue(); }
    else {
      // htmx does not swap an error answer: show the server's reason (as text) on the status line
      const page = new DOMParser().parseFromString(evt.detail.xhr.responseText || "", "text/html");
      const reason = page.getElementById("error-message");
      live("操作未完成（" + evt.detail.xhr.status + "）" + (reason ? "：" + reason.textContent : ""));
    }
  });
})();
