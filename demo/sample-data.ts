// Generated public-safety CAD (computer-aided dispatch) data: realistic-looking, made up, deterministic per seed.

/** Small seeded PRNG (mulberry32), so every demo run fills the same data. */
export class Gen {
  constructor(private s: number) {}
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.next() * xs.length)]!;
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
}

const STREETS = ['Clark', 'Halsted', 'Western', 'Ashland', 'Maple', 'Oak Park', 'Lincoln', 'Division', 'Grand', 'Cermak', 'Harlem', 'Pulaski', 'Riverside', 'Kedzie', 'Elm', 'Main'];
const SUFFIX = ['St', 'Ave', 'Blvd', 'Rd', 'Dr', 'Pkwy'];
const DIRS = ['N', 'S', 'E', 'W'];
const HIGHWAYS = ['I-94 EB', 'I-94 WB', 'I-290 EB', 'I-55 SB', 'US-41 NB', 'Route 53 SB'];
const HOSPITALS = ['Mercy General', 'St. Anne Medical Center', 'County Trauma', 'Northwestern Memorial', 'Lakeside Regional'];
const COMPLAINTS = ['chest pain', 'difficulty breathing', 'fall with head injury', 'unresponsive', 'diabetic emergency', 'seizure', 'allergic reaction', 'possible stroke', 'overdose'];
const ALARMS = ['commercial burglary', 'residential fire alarm', 'panic alarm', 'waterflow alarm', 'CO detector activation'];
const SCENE = [
  'heavy smoke showing from the 2nd floor, establishing command',
  'nothing showing, investigating',
  'patient is conscious and breathing, starting assessment',
  'two vehicles, one with airbag deployment, requesting PD for traffic control',
  'fire knocked down, checking for extension',
  'caller met us at the door, alarm was cooking smoke',
  'odor of gas in the basement, shutting off the meter, requesting utility',
  'all occupants accounted for',
];

export const address = (g: Gen): string => `${g.int(100, 9899)} ${g.pick(DIRS)} ${g.pick(STREETS)} ${g.pick(SUFFIX)}`;
const cross = (g: Gen): string => `${g.pick(STREETS)} ${g.pick(SUFFIX)} / ${g.pick(STREETS)} ${g.pick(SUFFIX)}`;
export const unit = (g: Gen): string => `${g.pick(['E', 'E', 'L', 'M', 'M', 'BC', 'R', 'SQ'])}${g.int(1, 64)}`;

export function incidentTitle(g: Gen): string {
  switch (g.int(0, 8)) {
    case 0: return `Structure fire, ${g.int(1, 4)}-story ${g.pick(['residential', 'commercial', 'apartment building', 'warehouse'])}, ${address(g)}`;
    case 1: return `Medical: ${g.pick(COMPLAINTS)}, ${g.int(1, 96)} y/o ${g.pick(['male', 'female'])}`;
    case 2: return `MVA ${g.pick(['with injuries', 'no injuries', 'rollover', 'with entrapment'])}, ${g.pick(HIGHWAYS)} at exit ${g.int(1, 300)}`;
    case 3: return `Alarm: ${g.pick(ALARMS)}, ${address(g)}`;
    case 4: return `Welfare check, ${address(g)}`;
    case 5: return `Gas leak / odor investigation, ${address(g)}`;
    case 6: return `Brush fire, approx. ${g.int(1, 40)} acres, ${g.pick(HIGHWAYS)} median`;
    case 7: return `Domestic disturbance, ${address(g)}, weapons ${g.pick(['unknown', 'none seen', 'reported'])}`;
    default: return `Hazmat: ${g.pick(['fuel spill', 'unknown white powder', 'chlorine odor', 'leaking drums'])}, ${address(g)}`;
  }
}

export function communicationBody(g: Gen): string {
  const u = unit(g);
  switch (g.int(0, 5)) {
    case 0: return `${u} on scene, ${g.pick(SCENE)}`;
    case 1: return `${u} enroute from Station ${g.int(1, 64)}`;
    case 2: return `${u} transporting ${g.int(1, 3)} to ${g.pick(HOSPITALS)}, ETA ${g.int(3, 25)} min`;
    case 3: return `Dispatch: ${u} respond to ${address(g)}, cross ${cross(g)}`;
    case 4: return `Caller states ${g.pick(['smoke coming from the garage', 'her husband collapsed in the kitchen', 'a car is on its side in the left lane', 'she smells gas in the hallway', 'neighbors are yelling, glass breaking'])}; callback ${g.int(200, 989)}-555-${String(g.int(0, 9999)).padStart(4, '0')}`;
    default: return `${u} available, returning to quarters`;
  }
}

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A call-for-service XML document from the 911 front end, 2-8 kB (so its ciphertext is TOASTed). */
export function cfsXml(g: Gen, id: number, at: Date): string {
  const target = g.int(2000, 8000);
  const t = (min: number) => new Date(at.getTime() + min * 60_000).toISOString();
  const head = [
    '<?xml version="1.0" encoding="UTF-8"?>',
    '<CallForService xmlns="urn:example:cad:cfs:2.1">',
    `  <CallNumber>${at.getUTCFullYear()}-${String(id).padStart(7, '0')}</CallNumber>`,
    `  <ReceivedAt>${at.toISOString()}</ReceivedAt>`,
    `  <CallType priority="${g.int(1, 4)}">${esc(incidentTitle(g))}</CallType>`,
    `  <Location><Address>${address(g)}</Address><CrossStreets>${cross(g)}</CrossStreets>` +
      `<Lat>${(41.6 + g.next() * 0.4).toFixed(6)}</Lat><Lon>${(-87.9 + g.next() * 0.4).toFixed(6)}</Lon></Location>`,
    `  <Caller><ANI>${g.int(200, 989)}555${String(g.int(0, 9999)).padStart(4, '0')}</ANI><ALIClass>${g.pick(['WPH2', 'RESD', 'BUSN', 'VOIP'])}</ALIClass></Caller>`,
    '  <Narrative>',
  ];
  const body: string[] = [];
  let size = head.join('\n').length + 200;
  for (let m = 0; size < target; m += g.int(0, 2)) {
    const line = g.chance(0.3)
      ? `    <Unit id="${unit(g)}" status="${g.pick(['DISP', 'ENRT', 'ONSC', 'TRAN', 'AVAIL'])}" time="${t(m)}"/>`
      : `    <Entry time="${t(m)}" operator="D${g.int(100, 499)}">${esc(communicationBody(g))}</Entry>`;
    body.push(line);
    size += line.length + 1;
  }
  return [...head, ...body, '  </Narrative>', '</CallForService>'].join('\n');
}
