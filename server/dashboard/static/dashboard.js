// Overdrive dashboard: a little progressive enhancement, no dependencies. Every page works
// without it; this adds confirm dialogs, the custom-policy shortcut and live campaign counts.
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

  // Campaign page: refresh the counts every few seconds from the session-authenticated
  // status.json; reload the page when the state or stage changes (buttons and stepper follow).
  var live = document.querySelector("[data-live-url]");
  if (!live) {
    return;
  }
  var url = live.getAttribute("data-live-url");
  var seconds = Math.max(1, Number(live.getAttribute("data-interval")) || 5);
  var stamp = live.querySelector("[data-live-stamp]");
  var state = live.getAttribute("data-state");
  var stage = live.getAttribute("data-stage");

  function show(progress) {
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

  function showStatuses(statuses) {
    var box = live.querySelector("[data-statuses]");
    if (!box) {
      return;
    }
    var nodes = [];
    Object.keys(statuses).forEach(function (name) {
      var chip = document.createElement("span");
      chip.className = "chip chip-static";
      chip.textContent = name.replace(/_/g, " ") + " " + statuses[name];
      nodes.push(chip, document.createTextNode(" ")); // spaced like the server renders them
    });
    box.replaceChildren.apply(box, nodes);
    box.parentNode.hidden = nodes.length === 0;
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
        if (data.state !== state || String(data.stage_index) !== stage) {
          window.location.reload();
          return;
        }
        show(data.progress);
        showStatuses(data.statuses);
        if (stamp) {
          stamp.textContent = "Updated " + new Date().toLocaleTimeString();
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
