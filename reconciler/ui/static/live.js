// Live updates of the dashboard (reconciler/ui/static). The pages work without this
// script; with it, a change of the status branch (a server-sent `status` event whose
// fingerprint differs from the one the page was drawn at) re-reads the page and swaps its
// content in. No inline script, no third-party code: the Content-Security-Policy allows
// only this file.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !window.DOMParser) {
    return;
  }
  var shown = document.body.getAttribute("data-fingerprint");
  if (!shown) {
    // A page that is not a view of the data (the test form's answer): nothing to refresh.
    return;
  }
  var badge = document.getElementById("live");
  var busy = false;
  // The newest fingerprint the server announced. An event that arrives while a refresh
  // runs is not dropped: when the refresh ends, a page still behind it is read again
  // (events come only on change, so a dropped one would leave the page stale for good).
  var latest = shown;

  function refresh(wanted) {
    latest = wanted;
    if (busy) {
      return;
    }
    busy = true;
    var failed = false;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var content = fresh.getElementById("content");
        var current = document.getElementById("content");
        if (content && current) {
          current.replaceWith(document.importNode(content, true));
          shown = fresh.body.getAttribute("data-fingerprint") || wanted;
          document.body.setAttribute("data-fingerprint", shown);
        }
      })
      .catch(function () {
        failed = true;
      })
      .then(function () {
        busy = false;
        if (failed) {
          // No event may come for a while (they come on change): try again soon.
          window.setTimeout(function () {
            if (latest !== shown) {
              refresh(latest);
            }
          }, 2000);
        } else if (latest !== shown && latest !== wanted) {
          refresh(latest);
        }
      });
  }

  // The browser reconnects a dropped stream by itself, but not one the server refused
  // (a 503 when too many streams are open): then a new one is tried, less often each time.
  var retryMs = 2000;

  function listen() {
    var events = new EventSource("/api/events");
    events.addEventListener("status", function (event) {
      var data = JSON.parse(event.data);
      retryMs = 2000;
      if (badge) {
        badge.hidden = false;
      }
      if (data.fingerprint !== shown) {
        refresh(data.fingerprint);
      }
    });
    events.addEventListener("error", function () {
      if (badge) {
        badge.hidden = true;
      }
      if (events.readyState === EventSource.CLOSED) {
        window.setTimeout(listen, retryMs);
        retryMs = Math.min(retryMs * 2, 60000);
      }
    });
  }

  listen();
})();
