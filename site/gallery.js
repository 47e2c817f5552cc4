/* galleryvis: the map viewer and the row filter. Vanilla JS, no external assets; works from
   file:// and from any static host (map values arrive as scripts, which file:// allows). */
(function () {
  "use strict";

  // -- map values: <script> files that call galleryvisMap({...}) ------------------------------
  var values = {};
  var waiting = {};
  window.galleryvisMap = function (payload) {
    var script = document.currentScript;
    var key = script ? script.getAttribute("data-key") : payload.src;
    values[key] = decode(payload);
    (waiting[key] || []).forEach(function (done) { done(values[key]); });
    delete waiting[key];
  };

  function decode(p) {
    var bytes = atob(p.q);
    var n = p.w * p.h;
    var out = new Float32Array(n);
    for (var i = 0; i < n; i++) {
      var q = bytes.charCodeAt(2 * i) | (bytes.charCodeAt(2 * i + 1) << 8);
      out[i] = p.lo + (q / 65535) * (p.hi - p.lo);
    }
    return { w: p.w, h: p.h, quantity: p.quantity, data: out };
  }

  function loadValues(src, done) {
    if (values[src]) { done(values[src]); return; }
    if (waiting[src]) { waiting[src].push(done); return; }
    waiting[src] = [done];
    var s = document.createElement("script");
    s.src = src;
    s.setAttribute("data-key", src);
    s.onerror = function () { delete waiting[src]; done(null); };
    document.head.appendChild(s);
  }

  function npyBlob(v) {
    var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + v.h + ", " + v.w + "), }";
    var total = 10 + header.length + 1;
    header += " ".repeat((64 - (total % 64)) % 64) + "\n";
    var head = new Uint8Array(10 + header.length);
    head.set([0x93, 78, 85, 77, 80, 89, 1, 0, header.length & 255, header.length >> 8]);
    for (var i = 0; i < header.length; i++) head[10 + i] = header.charCodeAt(i);
    return new Blob([head, v.data.buffer], { type: "application/octet-stream" });
  }

  // -- the viewer -----------------------------------------------------------------------------
  function setup() {
    var dialog = document.querySelector("dialog.viewer");
    var links = Array.prototype.slice.call(document.querySelectorAll("a.pic[data-image]"));
    if (!dialog || !links.length || typeof dialog.showModal !== "function") return;
    var $ = function (sel) { return dialog.querySelector(sel); };
    // The viewer's pictures join the page only when it first opens (an <img> without a source
    // would read as a broken image).
    var stage = $(".viewer-stage");
    var base = document.createElement("img"), map = document.createElement("img");
    var clip = document.createElement("div");
    base.className = "viewer-base";
    map.className = "viewer-map";
    clip.className = "viewer-clip";
    clip.appendChild(map);
    var opacity = $(".viewer-opacity"), swipe = $(".viewer-swipe"), readout = $(".viewer-value");
    var sliders = [opacity.parentNode, swipe.parentNode];  // their labels: nothing to blend without a base
    var png = $(".viewer-png"), npy = $(".viewer-npy"), pos = $(".viewer-pos");
    var current = -1, opener = null, blobUrl = null, shown = null;

    function show(i) {
      if (!base.parentNode) { stage.appendChild(base); stage.appendChild(clip); }
      current = (i + links.length) % links.length;
      var a = links[current];
      var title = a.querySelector("img").alt;
      $(".viewer-title").textContent = title;
      var under = a.getAttribute("data-image");  // empty for a picture made from no image
      base.hidden = !under;
      sliders.forEach(function (label) { label.hidden = !under; });
      if (under) base.src = under; else base.removeAttribute("src");
      apply();
      base.alt = "";
      map.src = a.getAttribute("href");
      map.alt = title;
      png.href = a.getAttribute("href");
      png.setAttribute("download", a.getAttribute("href").split("/").pop());
      pos.textContent = "cell " + (current + 1) + " of " + links.length + " (arrow keys move)";
      var src = a.getAttribute("data-values");
      readout.textContent = src ? "Move the pointer over the map to read its value" : "A picture: no values to read";
      shown = null;
      npy.hidden = npy.parentNode.hidden = true;
      if (src) {
        loadValues(src, function (v) {
          if (links[current] !== a) return;
          shown = v;
          if (!v) { readout.textContent = "values not available"; return; }
          if (blobUrl) URL.revokeObjectURL(blobUrl);
          blobUrl = URL.createObjectURL(npyBlob(v));
          npy.href = blobUrl;
          npy.setAttribute("download", a.getAttribute("href").split("/").pop().replace(/\.\w+$/, "") + ".npy");
          npy.hidden = npy.parentNode.hidden = false;
        });
      }
    }

    function apply() {  // a picture made from no image is shown whole, whatever the sliders say
      map.style.opacity = base.hidden ? "1" : String(opacity.value / 100);
      clip.style.clipPath = base.hidden ? "none" : "inset(0 " + (100 - swipe.value) + "% 0 0)";
    }

    function valueAt(event) {
      if (!shown) return;
      var r = map.getBoundingClientRect();
      var x = (event.clientX - r.left) / r.width, y = (event.clientY - r.top) / r.height;
      if (x < 0 || y < 0 || x >= 1 || y >= 1) return;
      var col = Math.floor(x * shown.w), row = Math.floor(y * shown.h);
      var v = shown.data[row * shown.w + col];
      readout.textContent = shown.quantity + " " + v.toPrecision(4) + " at (" +
        Math.floor(x * map.naturalWidth) + ", " + Math.floor(y * map.naturalHeight) + ")";
    }

    function neighbour(step) {
      var td = links[current].closest("td"), tr = td && td.parentElement;
      if (!tr) return current + step;
      var row = step > 0 ? tr.nextElementSibling : tr.previousElementSibling;
      while (row) {
        var cell = row.children[td.cellIndex];
        var a = cell && cell.querySelector("a.pic[data-image]");
        if (a) return links.indexOf(a);
        row = step > 0 ? row.nextElementSibling : row.previousElementSibling;
      }
      return current;
    }

    links.forEach(function (a, i) {
      a.addEventListener("click", function (event) {
        if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
        event.preventDefault();
        opener = a;
        show(i);
        apply();
        dialog.showModal();
      });
    });
    // The picture as PNG where the browser lets a page read its own pictures (any web server);
    // from file:// it cannot, and the link downloads the WebP file itself.
    png.addEventListener("click", function (event) {
      var canvas = document.createElement("canvas");
      canvas.width = map.naturalWidth;
      canvas.height = map.naturalHeight;
      try {
        canvas.getContext("2d").drawImage(map, 0, 0);
        canvas.toDataURL();  // throws on a tainted canvas
      } catch (err) {
        return;
      }
      event.preventDefault();
      canvas.toBlob(function (blob) {
        var a = document.createElement("a");
        a.href = URL.createObjectURL(blob);
        a.download = png.getAttribute("download").replace(/\.\w+$/, "") + ".png";
        document.body.appendChild(a);
        a.click();
        a.remove();
      }, "image/png");
    });
    opacity.addEventListener("input", apply);
    swipe.addEventListener("input", apply);
    stage.addEventListener("pointermove", valueAt);
    $(".viewer-close").addEventListener("click", function () { dialog.close(); });
    dialog.addEventListener("close", function () { if (opener) opener.focus(); });
    dialog.addEventListener("keydown", function (event) {
      if (event.target.tagName === "INPUT") return;
      var moves = { ArrowRight: current + 1, ArrowLeft: current - 1 };
      if (event.key in moves) { show(moves[event.key]); event.preventDefault(); }
      else if (event.key === "ArrowDown") { show(neighbour(1)); event.preventDefault(); }
      else if (event.key === "ArrowUp") { show(neighbour(-1)); event.preventDefault(); }
    });
  }

  // -- the row filter -------------------------------------------------------------------------
  function filter(input) {
    input.addEventListener("input", function () {
      var q = input.value.trim().toLowerCase();
      document.querySelectorAll("table.grid tbody tr").forEach(function (tr) {
        var th = tr.querySelector("th");
        tr.hidden = !!q && !(th && th.textContent.toLowerCase().indexOf(q) >= 0);
      });
    });
  }

  // -- sortable metrics tables: a header's button orders the rows best first, then reversed ------
  function sortable(table) {
    var heads = Array.prototype.slice.call(table.querySelectorAll("thead th[data-better]"));
    heads.forEach(function (th, i) {
      var button = th.querySelector("button.sort");
      if (!button) return;
      button.addEventListener("click", function () {
        var best = th.dataset.state !== "best";  // the first click: best first; the next reverses
        var sign = (th.dataset.better === "higher") === best ? -1 : 1;  // -1: descending
        heads.forEach(function (other) { other.removeAttribute("aria-sort"); delete other.dataset.state; });
        th.dataset.state = best ? "best" : "worst";
        th.setAttribute("aria-sort", sign < 0 ? "descending" : "ascending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var value = function (tr) {
          var td = tr.cells[i + 1], v = td && parseFloat(td.dataset.value);
          return isNaN(v) ? null : v;
        };
        rows.sort(function (a, b) {
          var va = value(a), vb = value(b);
          if (va === null || vb === null) return (va === null) - (vb === null) || a.dataset.order - b.dataset.order;
          return sign * (va - vb) || a.dataset.order - b.dataset.order;
        });
        rows.forEach(function (tr) { body.appendChild(tr); });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setup();
    document.querySelectorAll("input.row-filter").forEach(filter);
    document.querySelectorAll("table.metrics").forEach(sortable);
  });
})();
