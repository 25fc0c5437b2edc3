// The console's whole flow in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core), run by
// tests/it/console.rs, which starts nats-server, the welcome function, an SMTP server and `jetfn console`, publishes
// what this script asks for (`need: ...` lines) and checks the emails. Takes the screenshots in docs/console/.
//
// Environment: CONSOLE_URL, OPERATOR_TOKEN, VIEWER_TOKEN, ADMIN_TOKEN, CHROMIUM_PROFILE (a fresh directory, also
// where the Rust side drops files: event-id, email-arrived), SCREENSHOTS (a directory).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const base = env("CONSOLE_URL");
const profile = env("CHROMIUM_PROFILE");
const shots = env("SCREENSHOTS");
const step = (name) => console.log(`step: ${name}`);
const need = (what) => console.log(`need: ${what}`);

/** Waits for the Rust side to drop a file in the profile directory; returns its content. */
async function dropped(name, seconds = 40) {
  const path = join(profile, name);
  const deadline = Date.now() + seconds * 1000;
  while (!existsSync(path)) {
    if (Date.now() > deadline) throw new Error(`the test did not write ${name} within ${seconds} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return readFileSync(path, "utf8").trim();
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

// The flags keep Chromium off the (closed) network: no component updates, no sync, no background fetches, no QUIC.
const context = await chromium.launchPersistentContext(join(profile, "chromium"), {
  executablePath: "/usr/bin/chromium",
  headless: false,
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
  viewport: { width: 1366, height: 768 },
});
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(20000);
page.on("pageerror", (err) => console.log(`page error: ${err.message}`));
const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

async function signIn(token, role) {
  await page.goto(base);
  await page.locator("#token").fill(token);
  await page.locator("#sign-in-token button[type=submit]").click();
  await page.locator("#me-role", { hasText: role }).waitFor();
}

async function signOut() {
  await page.locator("#sign-out").click();
  await page.locator("#token").waitFor();
}

/** A POST from the signed-in page, as its own script would send it; returns the status and the answer. */
const post = (path, body) => page.evaluate(async ([path, body]) => {
  const r = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  return [r.status, await r.json()];
}, [path, body]);

try {
  // Sign-in page.
  await page.goto(base);
  await page.locator("#token").waitFor();
  await shot("sign-in");
  await page.locator("#token").fill("not-a-token");
  await page.locator("#sign-in-token button[type=submit]").click();
  await page.locator("#sign-in-error", { hasText: "unknown token" }).waitFor();

  // A viewer sees the overview without the operator's buttons, and the server refuses a pause.
  await signIn(env("VIEWER_TOKEN"), "viewer");
  await page.locator("#fn-welcome").waitFor();
  check(!(await page.locator("#pause-welcome").isVisible()), "a viewer is shown no Pause button");
  const [status, refused] = await post("/api/functions/welcome/pause", {});
  check(status === 403 && refused.role_needed === "operator", `a viewer's pause is refused: ${status} ${JSON.stringify(refused)}`);
  step("viewer refused");
  await signOut();

  // The operator pauses welcome; the backlog grows in the overview (updated live); then resumes.
  await signIn(env("OPERATOR_TOKEN"), "operator");
  const row = page.locator("#fn-welcome");
  await row.locator("#pause-welcome").click();
  await row.locator(".state", { hasText: "paused until resumed" }).waitFor();
  step("paused");
  need("backlog");
  await row.locator(".waiting", { hasText: /^5$/ }).waitFor({ timeout: 30000 });
  await page.waitForFunction(() => !/^–$/.test(document.querySelector("#fn-welcome td:nth-child(6)").textContent));
  await shot("overview");
  await row.locator("#resume-welcome").click();
  await row.locator(".state", { hasText: "delivering" }).waitFor();
  await row.locator(".waiting", { hasText: /^0$/ }).waitFor({ timeout: 30000 });
  step("resumed");

  // A dead letter: listed, found by its event id, opened (payload masked), edited (an invalid edit refused naming
  // the field), replayed.
  need("dead letter");
  const id = await dropped("event-id");
  await page.goto(`${base}/#/dlq?function=welcome`);
  await page.locator("#dlq-results tbody tr", { hasText: id }).waitFor();
  await shot("dead-letters");
  await page.goto(`${base}/#/event`);
  await page.locator("#event-id").fill(id);
  await page.locator("#event-form button[type=submit]").click();
  const link = page.locator("#event-result .copy a[href^='#/dlq/']").first();
  await link.waitFor();
  await page.locator("#event-result .copy", { hasText: "dead-lettered" }).waitFor();
  await shot("event");
  await link.click();
  await page.locator("#payload").waitFor();
  const payload = await page.locator("#payload").textContent();
  check(payload.includes("ty***@exmaple.com") && !payload.includes("typo@"), `the payload is masked: ${payload}`);
  await page.locator("a[href^='http://traces.test/trace/']").waitFor();
  await shot("dead-letter");
  await page.locator("#edit").click();
  const editor = page.locator("#edit-event");
  await editor.waitFor();
  const event = JSON.parse(await editor.inputValue());
  event.data.email = "not an address";
  await editor.fill(JSON.stringify(event, null, 2));
  await page.locator("#edit-replay").click();
  await page.locator("#edit-errors", { hasText: "/data/email" }).waitFor();
  await shot("edit");
  event.data.email = "typo@example.com";
  await editor.fill(JSON.stringify(event, null, 2));
  await page.locator("#edit-replay").click();
  await page.waitForFunction(() => location.hash === "#/dlq");
  step("replayed");
  await dropped("email-arrived");

  // The audit log shows each change with who made it.
  await page.goto(`${base}/#/audit`);
  for (const action of ["pause", "resume", "dlq-replay"]) {
    await page.locator("tr.audit-entry", { hasText: action }).filter({ hasText: "ada" }).first().waitFor();
  }
  await shot("audit");
  step("audited");

  // An admin sees the purge buttons an operator does not, and adds and cancels a schedule.
  await signOut();
  await signIn(env("ADMIN_TOKEN"), "admin");
  await page.goto(`${base}/#/dlq`);
  await page.locator("#purge-all").waitFor();
  await page.goto(`${base}/#/schedules`);
  await page.locator("#s-type").fill("cleanup.requested");
  await page.locator("#s-kind").selectOption("cron");
  await page.locator("#s-when").fill("0 30 3 * * *");
  await page.locator("#s-zone").fill("Europe/Amsterdam");
  await page.locator("#s-name").fill("nightly-cleanup");
  await page.locator("#s-add").click();
  await page.locator("#schedule-nightly-cleanup li").first().waitFor();
  await shot("schedules");
  page.once("dialog", (dialog) => dialog.accept());
  await page.locator("#cancel-nightly-cleanup").click();
  await page.locator("#schedule-nightly-cleanup").waitFor({ state: "detached" });
  step("scheduled and cancelled");
  step("done");
} catch (err) {
  console.log(`failed: ${err.stack || err}`);
  await page.screenshot({ path: join(profile, "failure.png"), fullPage: true }).catch(() => {});
  console.log(`the page at the failure: ${join(profile, "failure.png")}`);
  console.log(`its text: ${await page.locator("main").innerText().catch(() => "?")}`);
  process.exitCode = 1;
} finally {
  await context.close();
}
