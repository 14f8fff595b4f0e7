(()=>{
const r=(v,d)=>{const m=10**d;return (Math.floor(v*m+0.5)/m).toFixed(d)};
const dur=v=>{const t=Math.floor(Math.max(0,v)),d=Math.floor(t/86400),h=Math.floor(t%86400/3600),m=Math.floor(t%3600/60),s=t%60,p=n=>String(n).padStart(2,'0');return d?`${d}d${p(h)}h${p(m)}m`:h?`${h}h${p(m)}m${p(s)}s`:m?`${m}m${p(s)}s`:`${s}s`};
const F={money:v=>'$'+r(v,Math.abs(v)>=1?2:4),rate:v=>F.money(v)+'/h',dur,limit:dur,pct:v=>r(v,0)+'%',
bytes:v=>v>=1073741824?r(v/1073741824,1)+' GiB':r(v/1048576,0)+' MiB',watts:v=>r(v,0)+' W',celsius:v=>r(v,0)+' °C'};
const fmt=(k,v)=>{if((k==='limit'||k==='limit_bytes')&&v==null)return'off';if(k==='limit_bytes')k='bytes';if((k==='detail'||k==='at')&&v==null)return'';if(k==='count')return String(typeof v==='number'?Math.floor(v):0);
if(v==null)return'—';if(typeof v==='string'){if(k==='clock')return v.length>=16?v.slice(11,16)+' UTC':v;if(k==='at')return v.length>=16?'at '+v.slice(11,16)+' UTC':v;if(k==='time')return v.length>=19?v.slice(11,19):v;return v}
if(typeof v==='number'&&F[k])return F[k](v);return String(v)};
const get=(d,p)=>{const v=p.split('.').reduce((o,k)=>o==null?undefined:o[k],d);return v===undefined?null:v};
let last=null,seen=0,state=null,polls=0;
function fill(d){
for(const el of document.querySelectorAll('[data-k]')){const v=get(d,el.dataset.k);el.textContent=fmt(el.dataset.f,v);
if(el.dataset.f==='state')el.className='state s-'+v}
for(const el of document.querySelectorAll('[data-bar]')){const [n,m]=el.dataset.bar.split('/'),a=get(d,n),b=get(d,m);
const p=(typeof a==='number'&&typeof b==='number'&&b>0)?Math.min(100,Math.max(0,a/b*100)):null;
el.className='bar'+(p==null?' none':p>=95?' hot':p>=80?' warm':'');el.firstElementChild.style.width=(p??0).toFixed(1)+'%'}}
async function swap(){try{const t=await (await fetch('./',{cache:'no-store'})).text();const doc=new DOMParser().parseFromString(t,'text/html');
for(const el of document.querySelectorAll('[data-swap]')){const n=doc.getElementById(el.id);if(n)el.replaceWith(n)}
const ph=doc.getElementById('phases');if(ph&&!document.getElementById('phases'))document.getElementById('gpus').after(ph)}catch(e){}}
async function tick(){try{const d=await (await fetch('status',{cache:'no-store'})).json();
document.getElementById('stale').hidden=true;
if(state!==null&&d.state!==state){location.reload();return}state=d.state;
const key=(d.recent_events&&d.recent_events[0]?d.recent_events[0].id:'')+d.state;
if(last!==null&&key!==last)await swap();last=key;fill(d);seen=Date.now();document.documentElement.dataset.polls=++polls}
catch(e){if(seen)document.getElementById('stale').hidden=false}}
tick();setInterval(tick,2000);setInterval(swap,10000);
})();
