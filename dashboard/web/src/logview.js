// A <pre> that text is appended to (job logs, followed log files), with a size cap.

const MAX_CHARS = 4 * 1024 * 1024;
const KEEP_CHARS = 3 * 1024 * 1024;

export class LogView {
  constructor(pre, autoscroll) {
    this.pre = pre;
    this.autoscroll = autoscroll || null;
    this.chars = 0;
    this.ph = null;
  }

  hasText() {
    return this.chars > 0;
  }

  placeholder(text) {
    if (this.chars) return;
    if (!this.ph) {
      this.ph = document.createElement('span');
      this.ph.className = 'placeholder';
      this.pre.appendChild(this.ph);
    }
    this.ph.textContent = text;
  }

  clear() {
    this.pre.textContent = '';
    this.chars = 0;
    this.ph = null;
  }

  set(text) {
    this.clear();
    this.append(text);
  }

  append(text) {
    if (!text) return;
    if (this.ph) {
      this.ph.remove();
      this.ph = null;
    }
    this.pre.appendChild(document.createTextNode(text));
    this.chars += text.length;
    if (this.chars > MAX_CHARS) {
      // Keep the tail only; the browser would slow down with tens of megabytes in one <pre>.
      const all = this.pre.textContent;
      const cut = all.indexOf('\n', all.length - KEEP_CHARS);
      const kept = all.slice(cut === -1 ? all.length - KEEP_CHARS : cut + 1);
      this.pre.textContent = '';
      const note = document.createElement('span');
      note.className = 'placeholder';
      note.textContent = '[… earlier output dropped from this view …]\n';
      this.pre.appendChild(note);
      this.pre.appendChild(document.createTextNode(kept));
      this.chars = kept.length;
    }
    if (!this.autoscroll || this.autoscroll.checked) this.pre.scrollTop = this.pre.scrollHeight;
  }
}
