import { escapeHtml } from '../daemon/status-page.js';
import type { Block, ReportDocument } from './document.js';

/** Markdown: GitHub-style tables, cells with pipes and newlines escaped. */
export function renderMarkdown(d: ReportDocument): string {
  const cell = (v: string | number) => String(v).replace(/\\/g, '\\\\').replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
  const block = (b: Block): string => {
    if (b.kind === 'p') return b.tone === 'bad' ? `**${b.text}**` : b.tone === 'ok' ? `**${b.text}**` : b.text;
    if (b.kind === 'list') return b.items.map((i) => `- ${i}`).join('\n');
    if (b.rows.length === 0) return '_(none)_';
    return [`| ${b.header.map(cell).join(' | ')} |`, `|${b.header.map(() => ' --- ').join('|')}|`, ...b.rows.map((r) => `| ${r.map(cell).join(' | ')} |`)].join('\n');
  };
  return [`# ${d.title}`, '', d.subtitle, '', `**Verdict: ${d.verdict.text}**`, '', ...d.sections.flatMap((s) => [`## ${s.heading}`, '', ...s.blocks.flatMap((b) => [block(b), ''])])].join('\n');
}

const esc = escapeHtml;

/** Inline, no external asset: the file opens and prints anywhere. */
const CSS = `
body { font: 13px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #111; margin: 2em auto; max-width: 1100px; padding: 0 1em; }
h1 { font-size: 20px; margin-bottom: 0.2em; } h2 { font-size: 15px; border-bottom: 1px solid #999; margin-top: 1.6em; padding-bottom: 0.2em; }
.subtitle { color: #555; margin-top: 0; }
.verdict { font-size: 16px; font-weight: 600; padding: 0.6em 0.8em; border: 2px solid; border-radius: 4px; }
.verdict.ok, p.ok { border-color: #1a7f37; color: #1a7f37; } .verdict.bad, p.bad { border-color: #b42318; color: #b42318; }
p.note { color: #555; font-style: italic; } p.ok, p.bad { font-weight: 600; }
table { border-collapse: collapse; width: 100%; margin: 0.4em 0 0.8em; font-size: 12px; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: left; vertical-align: top; word-break: break-word; }
th { background: #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
@media print { body { margin: 0; max-width: none; } h2 { break-after: avoid; } tr { break-inside: avoid; } }
`;

export function renderHtml(d: ReportDocument): string {
  const block = (b: Block): string => {
    if (b.kind === 'p') return `<p${b.tone ? ` class="${b.tone}"` : ''}>${esc(b.text)}</p>`;
    if (b.kind === 'list') return `<ul>${b.items.map((i) => `<li>${esc(i)}</li>`).join('')}</ul>`;
    if (b.rows.length === 0) return '<p class="note">(none)</p>';
    return `<table><thead><tr>${b.header.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${b.rows
      .map((r) => `<tr>${r.map((c) => `<td${typeof c === 'number' ? ' class="num"' : ''}>${esc(c)}</td>`).join('')}</tr>`)
      .join('\n')}</tbody></table>`;
  };
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(d.title)}</title><style>${CSS}</style></head>
<body>
<h1>${esc(d.title)}</h1>
<p class="subtitle">${esc(d.subtitle)}</p>
<p id="verdict" class="verdict ${d.verdict.ok ? 'ok' : 'bad'}">Verdict: ${esc(d.verdict.text)}</p>
${d.sections.map((s) => `<h2>${esc(s.heading)}</h2>\n${s.blocks.map(block).join('\n')}`).join('\n')}
</body></html>
`;
}
