/* vsbench report: leaderboard sorting/filtering and gallery filtering. No dependencies, no
 * network: everything it needs is in the page's data-* attributes. */
(function () {
  "use strict";

  function valueOf(cell) {
    if (!cell) return null;
    var raw = cell.getAttribute("data-value");
    if (raw === null || raw === "") return null;
    var v = parseFloat(raw);
    return isNaN(v) ? null : v;
  }

  function fmt(v) { return v === null ? "–" : v.toFixed(1); }

  function initLeaderboard(table) {
    var rows = Array.prototype.slice.call(table.querySelectorAll("tr.model-row"));
    var averageMetrics = JSON.parse(table.getAttribute("data-average-metrics") || "[]");
    var metricLabel = {};
    table.querySelectorAll("th.metric-head").forEach(function (th) {
      metricLabel[th.getAttribute("data-metric")] = th.textContent.trim();
    });
    // Dataset names in column order (from the per-dataset header cells).
    var datasets = Array.prototype.map.call(table.querySelectorAll("th.dataset-head"), function (th) {
      return { name: th.getAttribute("data-dataset"), group: th.getAttribute("data-dgroup") };
    });
    rows.forEach(function (row) {
      row._cells = {};
      row.querySelectorAll("td[data-key]").forEach(function (td) { row._cells[td.getAttribute("data-key")] = td; });
    });
    var state = { key: null, dir: -1 };

    function sortBy(th) {
      var key = th.getAttribute("data-sort");
      var dir = state.key === key ? -state.dir : (key === "name" ? 1 : -1); // numbers: best first
      state.key = key; state.dir = dir;
      table.querySelectorAll("th.sortable").forEach(function (h) { h.setAttribute("aria-sort", "none"); });
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      resort();
    }

    function resort() {
      var key = state.key, dir = state.dir;
      table.querySelectorAll("tbody").forEach(function (tbody) {
        var group = Array.prototype.slice.call(tbody.querySelectorAll("tr.model-row"));
        group.sort(function (a, b) {
          var na = a.getAttribute("data-model"), nb = b.getAttribute("data-model");
          if (key === "name") return dir * na.localeCompare(nb);
          var va = valueOf(a._cells[key]), vb = valueOf(b._cells[key]);
          if (va === null && vb === null) return na.localeCompare(nb);
          if (va === null) return 1;  // missing results always last
          if (vb === null) return -1;
          if (va !== vb) return dir * (va - vb);
          return na.localeCompare(nb);
        });
        group.forEach(function (r) { tbody.appendChild(r); });
      });
    }

    table.querySelectorAll("th.sortable").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(th); });
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sortBy(th); }
      });
    });

    var controls = document.getElementById("leaderboard-controls");
    var filter = document.getElementById("model-filter");
    function checked(kind) {
      var out = {};
      controls.querySelectorAll('input[data-filter="' + kind + '"]').forEach(function (box) {
        if (box.checked) out[box.value] = true;
      });
      return out;
    }

    function isShown(row) { return !row.hidden && !row.parentNode.hidden; }

    function recompute(dgroups) {
      var shown = rows.filter(isShown);
      var shownDatasets = datasets.filter(function (d) { return dgroups[d.group]; });
      var common = shownDatasets.filter(function (d) {
        return shown.length > 0 && shown.every(function (row) {
          return averageMetrics.every(function (m) { return valueOf(row._cells[d.name + "|" + m]) !== null; });
        });
      }).map(function (d) { return d.name; });
      rows.forEach(function (row) {
        averageMetrics.forEach(function (m) {
          var td = row._cells["avg|" + m];
          if (!td) return;
          var avg = null;
          if (common.length) {
            avg = 0;
            common.forEach(function (d) { avg += valueOf(row._cells[d + "|" + m]); });
            avg /= common.length;
          }
          td.setAttribute("data-value", avg === null ? "" : String(avg));
          td.textContent = fmt(avg);
        });
      });
      // Best per column among the shown models.
      var keys = {};
      rows.forEach(function (row) { Object.keys(row._cells).forEach(function (k) { keys[k] = true; }); });
      Object.keys(keys).forEach(function (k) {
        var best = null;
        shown.forEach(function (row) {
          var v = valueOf(row._cells[k]);
          if (v !== null && (best === null || v > best)) best = v;
        });
        rows.forEach(function (row) {
          var td = row._cells[k];
          if (!td) return;
          var v = valueOf(td);
          td.classList.toggle("best", isShown(row) && v !== null && best !== null && Math.abs(v - best) < 1e-9);
        });
      });
      var labels = averageMetrics.map(function (m) { return metricLabel[m] || m; }).join(" / ");
      var text = document.getElementById("average-text");
      if (text) {
        text.textContent = common.length
          ? "Average (" + labels + "): mean over the " + common.length + " dataset(s) every listed model has: " + common.join(", ") + "."
          : "Average (" + labels + "): none, no dataset is shared by every listed model.";
      }
    }

    var grouped = document.getElementById("group-models");
    var flat = table.querySelector("tbody.flat");
    var groupBodies = Array.prototype.slice.call(table.querySelectorAll("tbody[data-mgroup]")).filter(function (b) { return b !== flat; });
    rows.forEach(function (row) { row._home = row.parentNode; });

    function regroup() {
      // Grouped: rows live in their model group's body. Flat: all rows in one body, one ranking.
      var target = grouped.checked ? null : flat;
      var ordered = [];
      (grouped.checked ? [flat] : groupBodies).forEach(function (body) {
        body.querySelectorAll("tr.model-row").forEach(function (r) { ordered.push(r); });
      });
      ordered.forEach(function (row) { (target || row._home).appendChild(row); });
      if (state.key) resort();
    }

    function apply() {
      var needle = (filter.value || "").trim().toLowerCase();
      var dgroups = checked("dgroup"), mgroups = checked("mgroup"), metrics = checked("metric");
      groupBodies.forEach(function (body) { body.hidden = !grouped.checked || !mgroups[body.getAttribute("data-mgroup")]; });
      flat.hidden = grouped.checked;
      rows.forEach(function (row) {
        row.hidden = !mgroups[row.getAttribute("data-mgroup")] ||
          (needle !== "" && row.getAttribute("data-model").toLowerCase().indexOf(needle) < 0);
      });
      table.querySelectorAll("[data-metric]").forEach(function (el) {
        var group = el.getAttribute("data-dgroup");
        el.hidden = !metrics[el.getAttribute("data-metric")] || (group !== null && !dgroups[group]);
      });
      var heads = Array.prototype.slice.call(table.querySelectorAll("th.metric-head"));
      function visibleHeads(attr, value) {
        return heads.filter(function (th) {
          return !th.hidden && (attr === null || th.getAttribute(attr) === value);
        }).length;
      }
      table.querySelectorAll("th.dataset-head").forEach(function (th) {
        var n = visibleHeads("data-dataset", th.getAttribute("data-dataset"));
        th.hidden = n === 0; th.colSpan = Math.max(n, 1);
      });
      table.querySelectorAll("th.dgroup-head").forEach(function (th) {
        var n = visibleHeads("data-dgroup", th.getAttribute("data-dgroup"));
        th.hidden = n === 0; th.colSpan = Math.max(n, 1);
      });
      var avgHead = table.querySelector("th.avg-head");
      var nAvg = heads.filter(function (th) { return !th.hidden && th.classList.contains("avg"); }).length;
      avgHead.hidden = nAvg === 0; avgHead.colSpan = Math.max(nAvg, 1);
      var total = 1 + visibleHeads(null, null);
      table.querySelectorAll("tr.group-row th").forEach(function (th) { th.colSpan = total; });
      recompute(dgroups);
    }

    grouped.addEventListener("change", regroup);
    controls.addEventListener("input", apply);
    controls.addEventListener("change", apply);
    var ci = document.getElementById("show-ci");
    ci.addEventListener("change", function () { table.classList.toggle("show-ci", ci.checked); });
  }

  function initGallery(list) {
    var cards = Array.prototype.slice.call(list.querySelectorAll("li.card"));
    var only = document.getElementById("only-beyond5");
    var order = document.getElementById("gallery-order");
    var count = document.getElementById("gallery-count");
    function num(card, attr, missing) {
      var v = parseFloat(card.getAttribute(attr));
      return isNaN(v) ? missing : v;
    }
    function apply() {
      var shown = 0;
      cards.forEach(function (card) {
        var rank = num(card, "data-rank", 0);
        card.hidden = only.checked && rank >= 1 && rank <= 5;
        if (!card.hidden) shown += 1;
      });
      var sorted = cards.slice().sort(function (a, b) {
        if (order.value === "rank") {
          // 0 means "not in the list at all": worse than any rank.
          var ra = num(a, "data-rank", 0) || Infinity, rb = num(b, "data-rank", 0) || Infinity;
          if (ra !== rb) return rb - ra;
        }
        return num(a, "data-order", 0) - num(b, "data-order", 0);
      });
      sorted.forEach(function (card) { list.appendChild(card); });
      count.textContent = shown + " shown";
    }
    only.addEventListener("change", apply);
    order.addEventListener("change", apply);
    apply();
  }

  var table = document.getElementById("leaderboard");
  if (table) initLeaderboard(table);
  var gallery = document.querySelector("[data-gallery]");
  if (gallery && document.getElementById("only-beyond5")) initGallery(gallery);
})();
