() => {
  // Client-side helpers for app.py: the character counter and an empty-box guard on Send, aria
  // labels on the mix's remove buttons, Imagine's tooltip, and focus on the message box without
  // scrolling a phone.
  const update = () => {
    const area = document.querySelector("#msg textarea");
    const counter = document.querySelector("#char-counter");
    if (area && counter) {
      const limit = Number(counter.dataset.limit), used = area.value.trim().length;
      const text = `${used.toLocaleString()} / ${limit.toLocaleString()} characters` +
        (used > limit ? ` (over the limit by ${(used - limit).toLocaleString()})` : "");
      if (counter.textContent !== text) counter.textContent = text;  // (a change is a mutation: no loop)
      counter.classList.toggle("over", used > limit);
      const send = document.querySelector("#msg .submit-button");
      if (send) {
        const empty = used === 0 || used > limit;
        if (send.disabled !== empty) send.disabled = empty;
        if (send.getAttribute("aria-label") !== (empty ? "Send (type a question first)" : "Send")) send.setAttribute("aria-label", empty ? "Send (type a question first)" : "Send");
      }
    }
    const imagine = document.querySelector("#imagine");
    if (imagine && !imagine.title)
      imagine.title = "Make a picture of what the model sees in your inputs (the text in the box is its prompt)";
    document.querySelectorAll(".mix-remove").forEach((button) => {
      if (button.getAttribute("aria-label")) return;
      const row = button.closest(".mix-row");
      const label = row && row.querySelector(".mix-weight [data-testid='block-info']");
      button.setAttribute("aria-label", `Remove ${label ? label.textContent.trim() : "this input"} from the mix`);
      button.setAttribute("title", "Remove from the mix");
    });
  };
  document.addEventListener("input", update, true);
  new MutationObserver(update).observe(document.body, { childList: true, subtree: true });
  setInterval(update, 500);  // value changes made by the server (a sent message clears the box)
  const focus = setInterval(() => {
    const area = document.querySelector("#msg textarea");
    if (!area) return;
    clearInterval(focus);
    if (window.innerWidth > 700) area.focus({ preventScroll: true });
  }, 200);
}
