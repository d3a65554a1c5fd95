// The dashboard's two charts, drawn by Chart.js from the JSON the page carries.
(function () {
  "use strict";
  var source = document.getElementById("chart-data");
  if (!source || typeof Chart === "undefined") { return; }
  var data = JSON.parse(source.textContent);
  var colours = { new: "#0b57d0", confirmed: "#1e8e3e", unsubscribed: "#f29900", bounced: "#d93025",
                  sent: "#0b57d0", complained: "#9334e6" };
  function datasets(series) {
    return Object.keys(series).map(function (name) {
      return { label: name, data: series[name], backgroundColor: colours[name], borderColor: colours[name] };
    });
  }
  var common = { responsive: true, maintainAspectRatio: false, animation: false,
                 interaction: { mode: "index", intersect: false } };
  new Chart(document.getElementById("growth-chart"), {
    type: "line", data: { labels: data.growth.labels, datasets: datasets(data.growth.series) },
    options: Object.assign({ scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }, common)
  });
  new Chart(document.getElementById("issues-chart"), {
    type: "bar", data: { labels: data.issues.labels, datasets: datasets(data.issues.series) },
    options: Object.assign({ scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }, common)
  });
  document.documentElement.dataset.chartsDrawn = "2";
})();
