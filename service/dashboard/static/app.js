// Hash router: #/jobs, #/jobs/<id>, #/new, #/schedules. Each view returns a cleanup function.
import { banner, catalog, tokenKey } from "./util.js";
import { renderJobs } from "./jobs.js";
import { renderDetail } from "./detail.js";
import { renderNewJob } from "./newjob.js";
import { renderSchedules } from "./schedules.js";

const view = document.getElementById("view");
let cleanup = () => {};

function route() {
  cleanup();
  banner("");
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  let section = parts[0] || "jobs";
  if (section === "jobs" && parts[1]) {
    cleanup = renderDetail(view, decodeURIComponent(parts[1])) || (() => {});
  } else if (section === "new") {
    cleanup = renderNewJob(view) || (() => {});
  } else if (section === "schedules") {
    cleanup = renderSchedules(view) || (() => {});
  } else {
    section = "jobs";
    cleanup = renderJobs(view, params) || (() => {});
  }
  document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === section));
  window.scrollTo(0, 0);
}

const tokenInput = document.getElementById("token");
tokenInput.value = localStorage.getItem(tokenKey) || "";
tokenInput.addEventListener("change", () => {
  if (tokenInput.value) localStorage.setItem(tokenKey, tokenInput.value.trim());
  else localStorage.removeItem(tokenKey);
});

window.addEventListener("hashchange", route);
catalog().catch(() => {}).finally(route);  // the progress bars need its phases
