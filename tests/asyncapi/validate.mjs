// Parses an AsyncAPI document with @asyncapi/parser (the AsyncAPI project's reference parser: schema validation
// plus its Spectral rules) and fails on any error-level diagnostic. Usage: node validate.mjs <file>
import { readFileSync } from 'node:fs';
import { Parser } from '@asyncapi/parser';

const file = process.argv[2];
if (!file) {
  console.error('usage: node validate.mjs <asyncapi document>');
  process.exit(2);
}
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
const severities = ['error', 'warning', 'info', 'hint'];
for (const diagnostic of diagnostics) {
  const where = diagnostic.path.join('/');
  console.log(`${severities[diagnostic.severity]}: ${diagnostic.code}: ${diagnostic.message} (at /${where})`);
}
const errors = diagnostics.filter((diagnostic) => diagnostic.severity === 0);
if (!document || errors.length > 0) {
  console.error(`${file}: ${errors.length} error(s); not a valid AsyncAPI document`);
  process.exit(1);
}
console.log(`${file}: valid AsyncAPI ${document.version()}, ${document.channels().length} channels, ` +
  `${document.operations().length} operations, ${document.messages().length} messages`);
