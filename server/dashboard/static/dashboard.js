// Overdrive dashboard: a little progressive enhancement, no dependencies. Every page works
// without it; this adds confirm dialogs, the custom-policy shortcut and live refreshes of the
// campaign page and the overview. Times come from the server, in UTC: nothing here formats a
// date in the browser's time zone.
(function () {
  "use strict";

  // A submit button with data-confirm asks before its form is sent (abort, for instance).
  document.addEventListener("submit", function (event) {
    var button = event.submitter;
    var message = button && button.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      event.preventDefault();
    }
  });

  // Typing into a field with data-selects="ID" checks the radio button ID (custom policy).
  document.addEventListener("input", function (event) {
    var id = event.target.getAttribute && event.target.getAttribute("data-selects");
    var radio = id && document.getElementById(id);
    if (radio && event.target.value.trim()) {
      radio.checked = true;
    }
  });

  // Live pages: an element with data-live-url is refreshed every data-interval seconds from
  // that session-authenticated JSON. Its "html" holds the page's [data-live-section]s, rendered
  // (and escaped) by the server's own templates; each replaces the section of the same name.
  // The campaign page's JSON also carries its counts, and its state and stage: when those
  // change the page reloads, so that its buttons and stepper follow.
  var live = document.querySelector("[data-live-url]");
  if (!live) {
    return;
  }
  var url = live.getAttribute("data-live-url");
  var seconds = Math.max(1, Number(live.getAttribute("data-interval")) || 5);
  var stamp = live.querySelector("[data-live-stamp]");
  var state = live.getAttribute("data-state");
  var stage = live.getAttribute("data-stage");

  function showCounts(progress) {
    Object.keys(progress).forEach(function (name) {
      if (typeof progress[name] !== "number") {
        return;
      }
      live.querySelectorAll('[data-count="' + name + '"]').forEach(function (el) {
        el.textContent = String(progress[name]);
      });
    });
    Object.keys(progress.percent).forEach(function (name) {
      live.querySelectorAll('[data-bar="' + name + '"]').forEach(function (el) {
        el.style.width = progress.percent[name] + "%";
      });
      live.querySelectorAll('[data-percent="' + name + '"]').forEach(function (el) {
        el.textContent = String(progress.percent[name]);
      });
    });
  }

  function showSections(html) {
    if (typeof html !== "string") {
      return;
    }
    var fresh = new DOMParser().parseFromString(html, "text/html");
    fresh.querySelectorAll("[data-live-section]").forEach(function (section) {
      var name = section.getAttribute("data-live-section");
      var current = document.querySelector('[data-live-section="' + name + '"]');
      if (!current || current.innerHTML === section.innerHTML) {
        return; // unchanged: leave it alone (focus, selection, an open <details>)
      }
      // Keep the <details> someone opened open.
      var open = Array.prototype.map.call(current.querySelectorAll("details"), function (d) {
        return d.open;
      });
      section.querySelectorAll("details").forEach(function (d, i) {
        d.open = Boolean(open[i]);
      });
      current.replaceWith(document.importNode(section, true));
    });
  }

  function refresh() {
    if (document.hidden) {
      return;
    }
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // signed out or token revoked: the page says so
          throw new Error("signed out");
        }
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.json();
      })
      .then(function (data) {
        if (state !== null && (data.state !== state || String(data.stage_index) !== stage)) {
          window.location.reload();
          return;
        }
        if (data.progress) {
          showCounts(data.progress);
        }
        showSections(data.html);
        if (stamp) {
          stamp.textContent = "Updated " + data.updated;
        }
      })
      .catch(function () {
        if (stamp) {
          stamp.textContent = "Live updates interrupted; retrying…";
        }
      });
  }

  window.setInterval(refresh, seconds * 1000);
})();
