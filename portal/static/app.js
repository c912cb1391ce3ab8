// Color FaaS portal: live status. An element with data-refresh="<url>" is replaced every few
// seconds by the HTML fragment the URL answers (same origin, session cookie). Pages work without it.
(function () {
  var els = document.querySelectorAll("[data-refresh]");
  if (!els.length || !window.fetch) return;
  var every = 3000;
  function tick() {
    els.forEach(function (el) {
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) return;
          el.innerHTML = html;
          el.setAttribute("data-refreshed-at", String(Date.now()));
        })
        .catch(function () {});
    });
  }
  setInterval(tick, every);
})();

// Copy buttons: <button data-copy="#id"> copies that element's text (where the browser allows).
(function () {
  document.querySelectorAll("[data-copy]").forEach(function (b) {
    b.addEventListener("click", function () {
      var el = document.querySelector(b.getAttribute("data-copy"));
      if (!el || !navigator.clipboard) return;
      navigator.clipboard.writeText(el.textContent).then(function () { b.textContent = "copied"; });
    });
  });
})();
